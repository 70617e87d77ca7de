"""A runner node for tests: serves workers until its stdin closes or it gets SIGTERM.

Run as a file (never imported by the tests), from a directory where the test modules cannot
be imported, so that workers really travel by value. Prints one JSON line when ready:
{"endpoint": ..., "name": ..., "pid": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

# Nothing of the test suite may be importable from here.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p) != _here]

from autonomy import Node  # noqa: E402

_tasks: set[asyncio.Task[None]] = set()


async def main(node: Node) -> None:
    ready = {"endpoint": node.endpoint, "name": node.name, "pid": os.getpid()}
    print(json.dumps(ready), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def stop_when_parent_goes() -> None:
        await reader.read()
        os.kill(os.getpid(), signal.SIGTERM)

    task = loop.create_task(stop_when_parent_goes())
    _tasks.add(task)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    Node.start(main, name=args.name, zone=args.zone, bind=args.bind, wait_until_interrupted=True)
