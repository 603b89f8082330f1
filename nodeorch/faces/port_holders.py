"""Is a local address:port free, and if not, which process holds it (from /proc, Linux only)?

Used by `nodeorch dev` to say "127.0.0.2:7946/udp is held by pid 4242 (nodeorch agent ...)"
instead of letting an agent exit with a bare "address in use".
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PortHolder:
    pid: int | None
    command: str

    def __str__(self) -> str:
        if self.pid is None:
            return "an unknown process (not visible to this user)"
        return f"pid {self.pid} ({self.command})"


def port_free(ip: str, port: int, kind: int) -> bool:
    """True if `ip:port` can be bound now (kind: socket.SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def _proc_hex(ip: str, port: int) -> str:
    """How /proc/net/{tcp,udp} spell an IPv4 address and port (little-endian address)."""
    packed = ipaddress.IPv4Address(ip).packed
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def _socket_inodes(ip: str, port: int, kind: int) -> set[str]:
    table = Path("/proc/net/tcp" if kind == socket.SOCK_STREAM else "/proc/net/udp")
    wanted = {_proc_hex(ip, port), _proc_hex("0.0.0.0", port)}
    inodes = set()
    with contextlib.suppress(OSError):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[1] in wanted:
                inodes.add(fields[9])
    return inodes


def port_holder(ip: str, port: int, kind: int) -> PortHolder:
    """The process holding a socket bound to `ip:port` (or the wildcard at that port)."""
    links = {f"socket:[{inode}]" for inode in _socket_inodes(ip, port, kind)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in links:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    return PortHolder(int(entry.name), " ".join(a.decode(errors="replace") for a in argv if a)[:120])
    return PortHolder(None, "")


def taken_ports(ip: str, ports: tuple[int, ...]) -> list[str]:
    """Every `ip:port/proto` among the gossip (TCP and UDP) and API (TCP) ports that is taken,
    with who holds it; empty when all are free."""
    problems = []
    for port in ports:
        for kind, proto in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
            if not port_free(ip, port, kind):
                problems.append(f"{ip}:{port}/{proto} is held by {port_holder(ip, port, kind)}")
    return problems
