"""Finding peers with zeroconf mDNS: announce this agent, browse for others, join the ones of
the same cluster. Browsing never stops, so a late or returning host is found without a restart.

Service type `_nodeorch._udp.local.`; the TXT record carries the cluster name, the node name and
the gossip port (also the SRV port). Peers of another cluster are seen and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_nodeorch._udp.local."

PeerFound = Callable[[tuple[str, int]], Awaitable[None]]


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value else ""


class Discovery:
    """`async with Discovery(node, cluster, (ip, port), on_peer)`: announce and browse until exit."""

    def __init__(self, node: str, cluster: str, gossip_addr: tuple[str, int], on_peer: PeerFound) -> None:
        self._node = node
        self._cluster = cluster
        self._addr = gossip_addr
        self._on_peer = on_peer
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ignored_clusters: set[str] = set()

    async def __aenter__(self) -> Self:
        host = ipaddress.ip_address(self._addr[0])
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V6Only if host.version == 6 else IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._node}.{SERVICE_TYPE}",
            addresses=[host.packed],
            port=self._addr[1],
            properties={"cluster": self._cluster, "node": self._node, "port": str(self._addr[1]), "v": "1"},
            server=f"{self._node}.local.",
        )
        try:
            await self._zeroconf.async_register_service(self._info, allow_name_change=False)
            self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._changed])
        except Exception as error:  # no multicast-capable interface, a name clash, ...: seeds still work
            log.warning("%s: mDNS discovery unavailable: %s", self._node, error)
            await self._zeroconf.async_close()
            self._zeroconf = self._info = None
            return self
        log.info("%s: mDNS announcing %s:%s for cluster %s", self._node, *self._addr, self._cluster)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zeroconf.async_unregister_service(self._info)
                await self._zeroconf.async_close()

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange,
                 **_: Any) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.create_task(self._resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zeroconf is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, 3000):
            return
        props = info.properties or {}
        cluster, node = _text(props.get(b"cluster")), _text(props.get(b"node"))
        if node == self._node:
            return
        if cluster != self._cluster:
            if cluster not in self.ignored_clusters:
                self.ignored_clusters.add(cluster)
                log.info("%s: ignoring %s of cluster %r", self._node, node or name, cluster)
            return
        for address in info.parsed_addresses():
            if info.port:
                await self._on_peer((address, info.port))
                return
