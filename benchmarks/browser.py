"""Headless Chromium for the dashboard's tests and benchmark: the installed browser (Debian's
`chromium`), never a download, with the flags it needs here (../shared/FIELD-NOTES.md)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("FEED_CHROMIUM", "/usr/bin/chromium"))
"""The browser: Debian's package installs it here (`apt-get install chromium`)."""

ARGS = (
    "--headless",
    "--no-sandbox",  # as root there is no sandbox to use
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else it tries the closed network again and again
    "--disable-component-update",
    "--disable-sync",
)
"""Playwright adds a fresh `--user-data-dir` for every launch."""


def unavailable() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None
