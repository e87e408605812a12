"""LAN mode on one machine: the server in its own network namespace, joined by a veth pair.

The load generator then reaches the server through a real network stack (two interfaces, ARP,
routing), and measures it as it would a server on another host: latencies are corrected by the
clock offset estimated from ping/pong round trips, and the offset, its uncertainty and the round
trip are reported. Both ends share one clock here, so the estimated offset should come out at zero
within its uncertainty: that is the check that the correction works. Needs root (`ip netns`).
The namespace and the veth pair are created for the run and removed after it, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import runner
from benchmarks.scenarios import Scenario
from benchmarks.servers import SERVERS, ServerSpec

SUBNET = "10.213.{}.{}"
"""Addresses of this run's own two test hosts, inside the namespace it creates."""


class LanError(RuntimeError):
    pass


def _ip(*args: str, namespace: str | None = None) -> None:
    command = (
        ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace, "ip", *args]
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LanError(f"{' '.join(command)}: {result.stderr.strip()}")


@contextlib.contextmanager
def namespace(delay_ms: float = 0.0) -> Iterator[tuple[str, str, str]]:
    """A namespace joined to this one by a veth pair; yields (name, host address, server
    address)."""
    tag = os.getpid() % 250 + 1
    name = f"feedlan{os.getpid()}"
    host_if, ns_if = f"fl{tag}a", f"fl{tag}b"
    host_ip, server_ip = SUBNET.format(tag, 1), SUBNET.format(tag, 2)
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", f"{server_ip}/30", "dev", ns_if, namespace=name)
        _ip("link", "set", ns_if, "up", namespace=name)
        _ip("link", "set", "lo", "up", namespace=name)
        if delay_ms:
            for interface, ns in ((host_if, None), (ns_if, name)):
                command = [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    interface,
                    "root",
                    "netem",
                    "delay",
                    f"{delay_ms}ms",
                ]
                if ns:
                    command = ["ip", "netns", "exec", ns, *command]
                result = subprocess.run(command, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise LanError(
                        f"cannot add a delay ({result.stderr.strip()}): run without "
                        "--delay-ms, or load sch_netem"
                    )
        yield name, host_ip, server_ip
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


def main(args: argparse.Namespace, scenario: Scenario, run_scenario: Callable[..., int]) -> int:
    spec = SERVERS["feed"]
    try:
        with namespace(args.delay_ms) as (name, host_ip, server_ip):
            command = ["ip", "netns", "exec", name, *spec.command(scenario)]
            command[command.index("127.0.0.1")] = server_ip
            in_namespace = ServerSpec(spec.name, spec.description, lambda _s: command)
            out = Path(args.out) if args.out else None
            log = (out or Path("/tmp")) / f"lan-{os.getpid()}-server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            server = runner.Server(in_namespace, scenario, log)
            server_cpus, _ = runner.cores()
            try:
                server.start(server_cpus)
                lan: dict[str, Any] = {
                    "namespace": name,
                    "client_address": host_ip,
                    "server_address": server_ip,
                    "delay_ms_each_way": args.delay_ms,
                    "url": server.url,
                }
                print(
                    f"server in namespace {name} at {server.url}; client at {host_ip}", flush=True
                )
                return int(run_scenario(args, url=server.url, extra={"lan": lan}))
            finally:
                server.stop()
    except LanError as exc:
        print(f"LAN mode failed (it needs root, ip netns and veth): {exc}")
        return 2
