"""A stress of libzmq for tests/test_zmq_abort.py, run as a process (an abort kills it).

Each round: a ROUTER takes a flood of messages from 20 DEALERs in a child process, closes
while the flood goes on (its pipes terminate with data still arriving), and the child is
SIGKILLed (every connection hangs up at once): many peers leaving at once, as when a zone
stops. The sockets get autonomy's own options, with ZMTP heartbeats added or not:

    python zmq_leaving.py ROUNDS [--heartbeats]      prints "survived ROUNDS" at the end

With heartbeats, libzmq 4.3.5 can abort with ``Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)``: a heartbeat timer calls ``out_event()`` on an engine
whose input side has already set ``_io_error`` (a hang-up and a read reported in one epoll
event while the session's pipe is gone). Without heartbeats no timer calls it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import zmq

from autonomy._protocol import MAX_FRAME_BYTES
from autonomy._sockets import common_options

PEERS = 20


def configure(sock: zmq.Socket[bytes], heartbeats: bool) -> None:
    common_options(sock, MAX_FRAME_BYTES)
    if heartbeats:  # what autonomy's sockets had before (at 2 ms, to tick often)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 5000)


def flood(port: str, heartbeats: bool) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealers = []
    for _ in range(PEERS):
        dealer = context.socket(zmq.DEALER)
        configure(dealer, heartbeats)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealers.append(dealer)
    print("flooding", flush=True)
    while True:
        for dealer in dealers:
            dealer.send(b"z" * 4000, zmq.NOBLOCK)


def main() -> None:
    if sys.argv[1] == "--flood":
        flood(sys.argv[2], "--heartbeats" in sys.argv)
        return
    rounds = int(sys.argv[1])
    heartbeats = "--heartbeats" in sys.argv
    for _ in range(rounds):
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        router = context.socket(zmq.ROUTER)
        configure(router, heartbeats)
        router.setsockopt(zmq.LINGER, 2000)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        argv = [sys.executable, __file__, "--flood", str(port)]
        child = subprocess.Popen(
            [*argv, *(["--heartbeats"] if heartbeats else [])], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            child.stdout.readline()
            time.sleep(0.3)
            router.close()  # our pipes terminate while the flood goes on
            time.sleep(0.01)
        finally:
            child.send_signal(signal.SIGKILL)  # every peer hangs up at once
            child.wait(timeout=10)
        time.sleep(0.05)
        context.term()
    print(f"survived {rounds}", flush=True)


if __name__ == "__main__":
    main()
