"""CPU time and resident memory of a process and its descendants, read from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    cpu_seconds: float
    rss_bytes: int


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids = [pid]
    for child in _children(pid):
        pids.extend(tree(child))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sample(pid: int, exclude: tuple[str, ...] = ()) -> Sample:
    """CPU seconds (user + system) and RSS summed over the tree of `pid`, leaving out any
    process whose command line contains one of `exclude` (helpers that are not the server)."""
    cpu = 0.0
    rss = 0
    for member in tree(pid):
        if exclude and any(text in cmdline(member) for text in exclude):
            continue
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
            statm = Path(f"/proc/{member}/statm").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu += (int(fields[11]) + int(fields[12])) / _TICKS
        rss += int(statm.split()[1]) * _PAGE
    return Sample(cpu, rss)
