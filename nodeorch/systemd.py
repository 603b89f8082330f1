"""systemd integration: readiness and watchdog keep-alives through $NOTIFY_SOCKET (sd_notify).

The keep-alives are sent from the event loop itself, so a stuck loop stops them and systemd
restarts the daemon (WatchdogSec in the unit)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warning("sd_notify to %s failed: %s", address, error)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, or None when no watchdog is configured."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.01)
    except ValueError:
        return None


async def keep_alive(interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds, for as long as the event loop runs."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
