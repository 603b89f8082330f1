"""Which HTTP requests the status endpoint answers (pure: headers in, a refusal or None out).

A web page the operator happens to open can make the browser send requests to 127.0.0.1:7947. Two
rules keep such pages out:
- a Host header other than the listen address, localhost or a name in `[api] allowed_hosts` is
  refused, so a page using DNS rebinding (its own name resolving to 127.0.0.1) reads nothing;
- a request that changes something (POST) must carry a JSON content type or the X-Nodeorch header,
  which a plain form submission cannot send without the browser asking the agent first (CORS).
With `[api] token_file`, every request also needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

CUSTOM_HEADER = "X-Nodeorch"
"""Any value: proof the request was made by a program, not a browser form."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower-cased: without the port, and without brackets for IPv6."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    allowed_hosts: frozenset[str]
    """Host names (no port) accepted in the Host header."""
    any_address: bool = False
    """Listening on a wildcard address: any IP literal names this host (only names can rebind)."""
    check_host: bool = True
    """False on a unix socket, which no browser can reach."""
    token: str = ""

    @classmethod
    def for_listen(cls, listen: str, allowed_hosts: Iterable[str] = (), token: str = "") -> RequestPolicy:
        if listen.startswith("unix:"):
            return cls(frozenset(), check_host=False, token=token)
        host = host_name(listen)
        names = {"localhost", host, *(h.lower() for h in allowed_hosts)}
        wildcard = _is_ip(host) and ipaddress.ip_address(host).is_unspecified
        return cls(frozenset(names), any_address=wildcard, token=token)

    def refusal(self, changes_state: bool, host: str | None, content_type: str, custom_header: bool,
                authorization: str | None) -> Refusal | None:
        """Why this request is refused, or None. `changes_state`: a method other than GET/HEAD/OPTIONS
        on a route that takes it (a wrong method is left to the router's 405)."""
        if self.check_host:
            name = host_name(host or "")
            if not name:
                return Refusal(400, "a Host header is required")
            if name not in self.allowed_hosts and not (self.any_address and _is_ip(name)):
                return Refusal(403, f"Host {name!r} is not this agent's address; add it to [api] allowed_hosts "
                                    "if it is a name of this host")
        if self.token:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return Refusal(401, "a bearer token is required ($NODEORCH_TOKEN or [api] token_file)")
        if changes_state and not custom_header \
                and content_type.split(";", 1)[0].strip().lower() != "application/json":
            return Refusal(415, f"a request that changes state needs Content-Type: application/json "
                                f"or the {CUSTOM_HEADER} header")
        return None
