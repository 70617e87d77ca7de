"""Outgoing batches and traffic counts: the frames queued for one destination in one loop
turn, sent as one ZeroMQ message, and the messages and bytes a socket moved.

No sockets here: `Outbox` is given the function that sends, `Traffic` is counted by whoever
sends or receives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._protocol import BATCH_BYTES

__all__ = ["COALESCE_BYTES", "Outbox", "Traffic"]

COALESCE_BYTES: Final = BATCH_BYTES  # the wire's rule, from _protocol


class Traffic:
    """ZeroMQ messages and bytes one socket (or the whole transport) moved: counted per
    message and per batch, not per frame, so that counting costs next to nothing."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent")

    def __init__(self) -> None:
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def add(self, other: Traffic) -> None:
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received

    def as_dict(self) -> dict[str, int]:
        return {
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


class Outbox:
    """The frames queued for one destination in this loop turn, sent as one message."""

    __slots__ = ("frames", "send", "size")

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.frames: list[bytes] = []
        self.size = 0
        self.send = send

    def add(self, frame: bytes) -> None:
        size = len(frame)
        if self.size + size > COALESCE_BYTES:
            self.flush()  # keep every message within the wire's batch size
            if size >= COALESCE_BYTES:
                self.send(frame)  # a big frame travels alone
                return
        self.frames.append(frame)
        self.size += size

    def flush(self) -> None:
        frames = self.frames
        if frames:
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            frames.clear()
            self.size = 0
            self.send(data)
