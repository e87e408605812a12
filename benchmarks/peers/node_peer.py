"""Peer 3, Node's `ws`, behind the command line the Python peers share.

Starts `node node/server.js` and, once it listens, `python -m feed simulate ...` piped into its
stdin (the same market as the other peers, as NDJSON); with `--stdin`, node reads our own
standard input instead and no simulator runs. Prints node's `listening on ...` line on stderr.
SIGTERM or SIGINT is forwarded to both; exits 0 when node stopped cleanly, 1 when either
process failed on its own, 3 when node or its `ws` package is missing.

    python -m benchmarks.peers.node_peer --port 0 --symbols 100 --rate 2000
    python -m feed simulate --symbols 100 --rate 2000 | python -m benchmarks.peers.node_peer \
        --port 0 --symbols 100 --stdin
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
from asyncio.subprocess import PIPE, Process
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from benchmarks.peers import common
from simulators import symbol_names

NODE_DIR: Final = Path(__file__).resolve().with_name("node")
SERVER: Final = NODE_DIR / "server.js"
MISSING: Final = 3
READY_TIMEOUT: Final = 30.0  # seconds node may take to listen
STOP_TIMEOUT: Final = 5.0  # seconds each child may take to exit once told to
_PR_SET_PDEATHSIG: Final = 1


def missing() -> str | None:
    """Why the Node peer cannot run here, or None if it can."""
    if shutil.which("node") is None:
        return "node is not on PATH: install Node.js >= 18 to run this peer"
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        return f"the ws package is not installed: run `npm ci` in {NODE_DIR}"
    return None


def _die_with_parent() -> None:
    """Run in each child before exec: SIGTERM it when we die, even by SIGKILL (Linux only), so
    that a runner killing this wrapper never leaves node and the simulator behind."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


PREEXEC: Final = _die_with_parent if sys.platform == "linux" else None


def _say(message: str) -> None:
    print(f"node_peer: {message}", file=sys.stderr, flush=True)


async def _stop(process: Process | None) -> None:
    """SIGTERM `process` and wait for it, SIGKILL after STOP_TIMEOUT."""
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _relay(stream: asyncio.StreamReader) -> None:
    """Copy node's stdout to our stderr until it closes."""
    while line := await stream.readline():
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


async def _first(*aws: asyncio.Future[object] | asyncio.Task[object]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


async def run(args: argparse.Namespace, symbols_file: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # --stdin: node inherits our standard input; else a pipe from the simulator started below.
    read_fd, write_fd = (-1, -1) if args.stdin else os.pipe()
    node: Process | None = None
    sim: Process | None = None
    tasks: list[asyncio.Task[object]] = []
    try:
        node = await asyncio.create_subprocess_exec(
            "node",
            str(SERVER),
            f"--host={args.host}",
            f"--port={args.port}",
            f"--symbols-file={symbols_file}",
            stdin=None if args.stdin else read_fd,
            stdout=PIPE,
            preexec_fn=PREEXEC,
        )
        if read_fd >= 0:
            os.close(read_fd)
            read_fd = -1
        assert node.stdout is not None
        stopping = asyncio.create_task(stop.wait())
        node_done = asyncio.create_task(node.wait())
        ready = asyncio.create_task(node.stdout.readline())
        tasks += [stopping, node_done, ready]
        await asyncio.wait_for(_first(stopping, node_done, ready), READY_TIMEOUT)
        if not ready.done() or not ready.result():
            if stop.is_set():
                return 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.wait(), STOP_TIMEOUT)
            _say(f"node did not start (exit code {node.returncode})")
            return 1
        line = ready.result()
        os.unlink(symbols_file)  # node has read it
        watched = [stopping, node_done]
        if not args.stdin:
            sim = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "feed",
                "simulate",
                *common.market_args(args),
                stdout=write_fd,
                preexec_fn=PREEXEC,
            )
            os.close(write_fd)
            write_fd = -1
            watched.append(asyncio.create_task(sim.wait()))
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
        tasks += [*watched[2:], asyncio.create_task(_relay(node.stdout))]
        await _first(*watched)
        if stop.is_set():
            await asyncio.gather(_stop(node), _stop(sim))
            return 0 if node.returncode in (0, -signal.SIGTERM) else 1
        if node_done.done():
            _say(f"node exited on its own (exit code {node.returncode})")
        else:
            assert sim is not None
            _say(f"the tick simulator exited on its own (exit code {sim.returncode})")
        return 1
    except TimeoutError:
        _say(f"node did not listen within {READY_TIMEOUT:g} s")
        return 1
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        await asyncio.gather(_stop(node), _stop(sim))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parser("node_peer", "Node ws peer (node/server.js)").parse_args(argv)
    why = missing()
    if why is not None:
        _say(why)
        return MISSING
    try:
        common.settings(args)
    except ValueError as exc:
        _say(str(exc))
        return 2
    fd, symbols_file = tempfile.mkstemp(prefix="peer-symbols-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as names:
            json.dump(list(symbol_names(args.symbols)), names)
        return asyncio.run(run(args, symbols_file))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(symbols_file)


if __name__ == "__main__":
    sys.exit(main())
