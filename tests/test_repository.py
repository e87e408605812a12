"""The repository's contract: the README's commands, CI running them, and the code gates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_readme_gives_the_install_and_test_commands_and_ci_runs_the_test_one() -> None:
    run, test = readme_commands()[:2]
    assert "pip install -e ." in run and run.endswith("feed serve")
    assert test.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_ruff() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "feed", "simulators", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
