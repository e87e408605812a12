"""The JavaScript client (`feed/web/feed-client.js`): its Node tests (`tests/js/`), run with
Node's test runner against a real `feed serve` process started here (and the servers those
tests start, restart and suspend themselves)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal

import pytest

from tests.test_stdin import FEED, ROOT, serve

TESTS = ROOT / "tests" / "js"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs it)"
    if not (TESTS / "node_modules" / "ws").is_dir():
        return "tests/js/node_modules is missing: run `npm ci` in tests/js (.ci/run does)"
    return None


async def test_the_javascript_client_passes_its_node_tests() -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    args = ["--symbols", "20", "--rate", "1000", "--set", "websocket.heartbeat_interval=0.5"]
    async with serve(*args) as feed:
        env = {**os.environ, "FEED_URL": feed.ws, "FEED_COMMAND": json.dumps(FEED)}
        node = await asyncio.create_subprocess_exec(
            "node",
            "--test",
            "--test-reporter=spec",
            str(TESTS / "feed-client.test.mjs"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own group: a timeout ends the servers it started too
        )
        try:
            async with asyncio.timeout(90):
                output = (await node.communicate())[0].decode(errors="replace")
        finally:
            if node.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
                await node.wait()
    assert node.returncode == 0, output
    summary = dict(re.findall(r"^\u2139 (\w+) (\d+)$", output, re.MULTILINE))
    assert int(summary["pass"]) >= 10 and summary["fail"] == summary["skipped"] == "0", output
