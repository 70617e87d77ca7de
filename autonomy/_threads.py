"""Blocking calls off the event loop, each in a thread of its own that ends with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_thread"]

T = TypeVar("T")


async def in_thread(function: Callable[[], T], timeout_s: float) -> T:
    """``function()`` in a thread of its own, awaited with a deadline, the thread joined
    when it is done (the loop's default executor would keep a thread for the rest of the
    loop's life).

    Raises:
        TimeoutError: it took longer than ``timeout_s`` (the thread is left to finish).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if not done.done():
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function()
        except BaseException as error:
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    thread = threading.Thread(target=run, name="autonomy-blocking", daemon=True)
    thread.start()
    async with asyncio.timeout(timeout_s):
        result = await done
    thread.join()
    return result
