"""`feed gateway --workers N`: N gateway processes sharing one port, so one host uses its cores.

Each worker is a whole gateway (its own NATS connection, market and hub) bound with
SO_REUSEPORT, and the kernel spreads new connections over them. The supervisor (this process)
reserves the port first when it is 0, starts the workers, restarts one that dies, and passes
SIGINT and SIGTERM on, so every client is closed with 1001 as by one `feed gateway`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from feed.config import Config

log = logging.getLogger("feed.workers")

RESTART_WAIT = 1.0
"""Seconds before a worker that died is started again."""


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT: picks the port when it is
    0 and keeps it ours until the workers listen on it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def supervise(config: Config, argv: list[str]) -> int:
    from feed.auth import check_bind

    host, count = config.server.host, config.server.workers
    check_bind(config.auth, host)  # what each worker would refuse: refused once, here
    reserved = _reserve(host, config.server.port)
    port = reserved.getsockname()[1]
    command = [sys.executable, "-m", "feed", *argv, "--port", str(port), "--workers", "1"]
    children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
    stopping = False

    def start(index: int) -> None:
        env = dict(os.environ, FEED_WORKER=str(index))
        child = subprocess.Popen(command, env=env)
        children[child.pid] = (index, child)

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for _, child in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(count):
        start(index)
    log.info(
        "%d gateway workers sharing ws://%s:%d/ws (SO_REUSEPORT; dashboard: http://%s:%d/)",
        count,
        host,
        port,
        host,
        port,
    )
    code = 0
    refused = False
    try:
        while children:
            pid, status = os.wait()
            entry = children.pop(pid, None)
            if entry is None:
                continue
            index, _ = entry
            if stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == 2:  # a bad config value, said by the worker: starting again cannot help
                log.error("gateway worker %d refused its config; stopping every worker", index)
                refused = True
                stop(signal.SIGTERM, None)
                continue
            log.warning("gateway worker %d exited with %d; starting it again", index, code)
            time.sleep(RESTART_WAIT)
            if not stopping:
                start(index)
    finally:
        reserved.close()
    return 2 if refused else 0 if stopping else code
