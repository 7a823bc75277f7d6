"""Test hosts in network namespaces: host i is a namespace whose only link is a veth pair,
10.77.i.2 there and 10.77.i.1 here, so a process started in it reaches what listens on
10.77.i.1 (the test PostgreSQL, the fake model) and nothing else. Needs root and iproute2.
Used by tests/test_multihost.py and benchmarks/scale_out.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager


class Unavailable(Exception):
    """Network namespaces cannot be made here (not root, no iproute2, no permission)."""


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def cut(i: int, cut_off: bool = True) -> None:
    """Take host i's link down (a network partition: the host lives on, unreachable), or up."""
    _ip("link", "set", f"cb{os.getpid() % 10000}a{i}", "down" if cut_off else "up")


def gateway(i: int) -> str:
    """The address host i reaches this machine at."""
    return f"10.77.{i}.1"


@contextmanager
def hosts(n: int):
    """Make n hosts; yield their namespace names (host i is names[i - 1]); remove them after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise Unavailable("needs root and iproute2 (`ip netns`)")
    tag = f"{os.getpid() % 10000}"
    made: list[tuple[str, str]] = []
    try:
        try:
            for i in range(1, n + 1):
                ns, here, there = f"cbt{tag}h{i}", f"cb{tag}a{i}", f"cb{tag}b{i}"
                _ip("netns", "add", ns)
                made.append((ns, here))
                _ip("link", "add", here, "type", "veth", "peer", "name", there)
                _ip("link", "set", there, "netns", ns)
                _ip("addr", "add", f"{gateway(i)}/24", "dev", here)
                _ip("link", "set", here, "up")
                _ip("addr", "add", f"10.77.{i}.2/24", "dev", there, ns=ns)
                _ip("link", "set", there, "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"cannot make network namespaces ({exc.stderr.strip()})") from exc
        yield [ns for ns, _ in made]
    finally:
        for ns, here in made:
            subprocess.run(["ip", "link", "del", here], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
