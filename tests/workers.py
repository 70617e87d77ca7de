"""Workers used by the tests. Shipped by value to runner processes (see conftest)."""

from __future__ import annotations

import asyncio
import json

from autonomy import ReplyError


class Echoer:
    async def handle_message(self, context, message):
        await context.reply(message)


class Calculator:
    async def handle_message(self, context, message):
        data = json.loads(message)
        await context.reply(json.dumps({"result": data["x"] + data["y"]}))


class Counter:
    def __init__(self):
        self.count = 0

    async def handle_message(self, context, message):
        if message == "increment":
            self.count += 1
        elif message == "boom":
            raise ValueError(f"boom at count {self.count}")
        await context.reply(f"Count: {self.count}")


class Recorder:
    """Records every message; replies with the record as JSON on "get"."""

    def __init__(self):
        self.seen = []

    async def handle_message(self, context, message):
        if message == "get":
            await context.reply(json.dumps(self.seen))
        else:
            self.seen.append(message)


class Sleeper:
    """Sleeps for the number of seconds in the message, then replies "slept <message>"."""

    async def handle_message(self, context, message):
        await asyncio.sleep(float(message))
        await context.reply(f"slept {message}")


class Silent:
    async def handle_message(self, context, message):
        pass


class DoubleReplier:
    """Replies twice; records the error of the second reply and reports it on "get"."""

    def __init__(self):
        self.errors = []

    async def handle_message(self, context, message):
        if message == "get":
            await context.reply(json.dumps(self.errors))
            return
        await context.reply("first")
        try:
            await context.reply("second")
        except ReplyError as exc:
            self.errors.append(type(exc).__name__)


class BadReplier:
    """Replies with a dict: the reply fails with MessageTypeError inside the handler."""

    async def handle_message(self, context, message):
        await context.reply({"result": 42})


class NodeHolder:
    """Holds a node (by reference when shipped) and uses it while handling messages."""

    def __init__(self, node):
        self.node = node

    async def handle_message(self, context, message):
        if message == "whoami":
            await context.reply(f"{type(self.node).__name__}:{self.node.name}")
        elif message == "spawn":
            await self.node.start_worker("spawned", Echoer())
            workers = await self.node.list_workers()
            await context.reply(json.dumps(sorted(w["name"] for w in workers)))
        else:
            await context.reply(await self.node.send_and_receive("echo", message, timeout=5000))


class ZoneLister:
    """Asks its own node which nodes of the zone it knows; message: "<filter> <count>"."""

    def __init__(self, node):
        self.node = node

    async def handle_message(self, context, message):
        from autonomy import Zone

        pattern, count = message.split()
        found = await Zone.nodes(self.node, filter=pattern, count=int(count), timeout=15_000)
        await context.reply(json.dumps([each.name for each in found]))


class Hog:
    """Blocks its node's whole event loop (a CPU-bound handler) for the seconds it is sent."""

    async def handle_message(self, context, message):
        import time

        time.sleep(float(message))  # noqa: ASYNC251 - blocking the loop is the point
        await context.reply(f"hogged {message}")
