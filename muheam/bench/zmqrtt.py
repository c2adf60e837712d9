"""The baseline every protocol benchmark is compared with: a plain ZeroMQ round trip between two processes.

An echo ROUTER in a child process and a DEALER here, over TCP on loopback, with the same msgpack framing cost
as a small protocol message.  Measured in the same run as the protocol it is compared with, on the same noisy
machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import zmq

from muheam.ops.procs import free_port

_ECHO = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = s.recv_multipart()
    if frames[-1] == b"stop":
        s.send_multipart(frames)
        break
    s.send_multipart(frames)
"""


def measure_rtt_us(samples: int = 2000) -> float:
    """Median round trip in microseconds of a 64-byte message to an echo process."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, endpoint], stdout=subprocess.PIPE, text=True)
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sock.connect(endpoint)
        payload = b"x" * 64
        for _ in range(200):  # warm up the connection
            sock.send(payload)
            sock.recv()
        times = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            sock.send(payload)
            sock.recv()
            times.append((time.perf_counter_ns() - t0) / 1000)
        sock.send(b"stop")
        sock.poll(1000)
        return float(statistics.median(times))
    finally:
        sock.close(0)
        ctx.term()
        proc.kill()
        proc.wait()
