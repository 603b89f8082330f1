"""The transport seam, and its real implementation on asyncio UDP and TCP sockets.

Packets are fire-and-forget datagrams. Requests are one TCP exchange per connection: a length-
prefixed frame each way (a zero length means "no reply"). The transport moves opaque bytes; sealing
and decoding happen above it, so the in-memory network implements the very same seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol, Self

from gossip._errors import PeerRefused, TransportError
from gossip._messages import Address

log = logging.getLogger(__name__)

PacketHandler = Callable[[bytes, Address], None]
RequestHandler = Callable[[bytes, Address], Awaitable[bytes | None]]
UnreachableHandler = Callable[[Address], None]

_LENGTH = struct.Struct(">I")
_SOCKET_BUFFER = 4 * 1024 * 1024
_EPHEMERAL_BIND_ATTEMPTS = 20


class _TcpPortTaken(Exception):
    """The UDP port picked for an ephemeral bind is taken for TCP."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.port = port
"""Ask the kernel for roomy UDP buffers, so a burst or a short stall of the loop loses nothing."""
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3


class Transport(Protocol):
    """What the node needs from a network: datagrams and request/reply exchanges."""

    @property
    def local_addr(self) -> Address: ...

    def serve(
        self, on_packet: PacketHandler, on_request: RequestHandler, on_unreachable: UnreachableHandler | None = None
    ) -> None:
        """Install the handlers for inbound traffic; nothing is delivered before this.
        `on_unreachable(addr)`: the host at addr answered that nothing listens on that UDP port."""

    def send_packet(self, to: Address, data: bytes) -> None:
        """Send one datagram; failures are counted, never raised (UDP promises nothing anyway)."""

    async def request(self, to: Address, data: bytes, timeout: float) -> bytes:
        """One exchange; the reply frame, b"" if the peer had none. Raises TransportError."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def _addr(sockaddr: tuple[object, ...]) -> Address:
    return (str(sockaddr[0]), int(str(sockaddr[1])))


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTcpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._owner._datagram(data, _addr(addr))

    def error_received(self, exc: Exception) -> None:
        self._owner._icmp_errors()


class UdpTcpTransport:
    """UDP and TCP on one port. Use as `async with UdpTcpTransport(...) as transport`."""

    def __init__(
        self,
        bind: Address,
        *,
        max_packet: int,
        max_frame: int,
        max_inbound_streams: int = 64,
        stream_timeout: float = 10.0,
        stats: Counter[str] | None = None,
    ) -> None:
        self._bind = bind
        self._max_packet = max_packet
        self._max_frame = max_frame
        self._stream_timeout = stream_timeout
        self._inbound = asyncio.Semaphore(max_inbound_streams)
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._on_packet: PacketHandler | None = None
        self._on_request: RequestHandler | None = None
        self._on_unreachable: UnreachableHandler | None = None
        self._sock: socket.socket | None = None
        self._local: Address = bind

    @property
    def local_addr(self) -> Address:
        return self._local

    def serve(
        self, on_packet: PacketHandler, on_request: RequestHandler, on_unreachable: UnreachableHandler | None = None
    ) -> None:
        self._on_packet = on_packet
        self._on_request = on_request
        self._on_unreachable = on_unreachable

    async def __aenter__(self) -> Self:
        host, port = self._bind
        # Port 0 picks a free UDP port; the same number may be taken for TCP by someone else, so
        # an ephemeral bind tries again with another number.
        attempts = _EPHEMERAL_BIND_ATTEMPTS if port == 0 else 1
        for attempt in range(1, attempts + 1):
            try:
                await self._bind_both(host, port)
                return self
            except _TcpPortTaken as taken:
                if attempt == attempts:
                    raise TransportError(f"cannot bind TCP {host}:{taken.port}: address already in use") from None
        raise AssertionError("unreachable")

    async def _bind_both(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise TransportError(f"cannot bind UDP {host}:{port}: {error.strerror or error}") from error
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        with contextlib.suppress(OSError):  # Linux: report ICMP errors, with their destination
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        self._sock = sock
        udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
        local = (host, _addr(sock.getsockname())[1])
        try:
            self._tcp = await asyncio.start_server(
                self._serve_stream, host, local[1], family=family, reuse_address=True, backlog=256
            )
        except OSError as error:
            udp.close()
            await asyncio.sleep(0)  # the socket closes on the next loop iteration
            if port == 0 and error.errno == errno.EADDRINUSE:
                raise _TcpPortTaken(local[1]) from None
            raise TransportError(f"cannot bind TCP {host}:{local[1]}: {error.strerror or error}") from error
        self._udp, self._local = udp, local

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()
            await asyncio.sleep(0)  # the socket closes on the next loop iteration: let it, so the port is free
        self._on_packet = self._on_request = self._on_unreachable = None

    # Datagrams -----------------------------------------------------------------------------------

    def _icmp_errors(self) -> None:
        """Drain the socket's error queue: a "port unreachable" from a peer's host means nothing
        listens there any more, which the prober can use at once instead of waiting for a timeout."""
        self.stats["udp_errors"] += 1
        if self._sock is None:
            return
        for _ in range(64):
            try:
                _, ancillary, _, dst = self._sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:
                return
            for _level, _kind, data in ancillary:
                if len(data) < _EXTENDED_ERR.size:
                    continue
                _, origin, icmp_type, icmp_code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
                port_unreachable = (origin == _ORIGIN_ICMP and (icmp_type, icmp_code) == (3, 3)) or (
                    origin == _ORIGIN_ICMP6 and (icmp_type, icmp_code) == (1, 4)
                )
                if port_unreachable and self._on_unreachable is not None and dst:
                    self.stats["port_unreachable"] += 1
                    self._on_unreachable(_addr(dst))

    def _datagram(self, data: bytes, src: Address) -> None:
        self.stats["packets_in"] += 1
        self.stats["bytes_in"] += len(data)
        if len(data) > self._max_packet:
            self.stats["drop_oversized_packet"] += 1
            return
        if self._on_packet is not None:
            self._on_packet(data, src)

    def send_packet(self, to: Address, data: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            self.stats["send_errors"] += 1
            return
        try:
            self._udp.sendto(data, to)
        except (OSError, ValueError):
            self.stats["send_errors"] += 1
            return
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)

    # Streams -------------------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        header = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        if length > self._max_frame:
            raise TransportError(f"frame of {length} bytes exceeds {self._max_frame}")
        return await reader.readexactly(length)

    @staticmethod
    def _frame(data: bytes) -> bytes:
        return _LENGTH.pack(len(data)) + data

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _addr(writer.get_extra_info("peername") or ("0.0.0.0", 0))
        try:
            async with self._inbound:
                async with asyncio.timeout(self._stream_timeout):
                    request = await self._read_frame(reader)
                    self.stats["streams_in"] += 1
                    self.stats["bytes_in"] += len(request) + _LENGTH.size
                    reply = await self._on_request(request, peer) if self._on_request else None
                    out = self._frame(reply or b"")
                    writer.write(out)
                    self.stats["bytes_out"] += len(out)
                    await writer.drain()
        except (TransportError, asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError) as error:
            self.stats["drop_bad_stream"] += 1
            log.debug("stream from %s:%s dropped: %s", peer[0], peer[1], error)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _source_for(self, to: Address) -> Address | None:
        """Streams leave from the bound address, as packets do, so a peer (and a firewall) sees
        one address per member; a wildcard bind leaves the choice to the kernel."""
        host = self._local[0]
        if host in ("", "0.0.0.0", "::") or (":" in host) != (":" in to[0]):
            return None
        return (host, 0)

    async def request(self, to: Address, data: bytes, timeout: float) -> bytes:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(to[0], to[1], local_addr=self._source_for(to))
                self.stats["streams_out"] += 1
                frame = self._frame(data)
                writer.write(frame)
                self.stats["bytes_out"] += len(frame)
                await writer.drain()
                reply = await self._read_frame(reader)
                self.stats["bytes_in"] += len(reply) + _LENGTH.size
                return reply
        except TimeoutError:
            raise TransportError(f"{to[0]}:{to[1]}: no reply within {timeout:.2f}s") from None
        except ConnectionRefusedError:
            raise PeerRefused(f"{to[0]}:{to[1]}: connection refused") from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as error:
            raise TransportError(f"{to[0]}:{to[1]}: {error}") from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
