"""The node config file, nodeorch.toml: loading and validation.

Every key is checked: an unknown key, a wrong type or an impossible value is refused with the file,
the line (when the key can be found in the text), the key and what is wrong. A tiny file works:
everything but what cannot be guessed has a sane default.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossip import DEFAULT_PORT as GOSSIP_DEFAULT_PORT
from gossip import ConfigError as GossipConfigError
from gossip import parse_address
from nodeorch.spec.hook_spec import HookSpec, parse_hooks
from nodeorch.spec.toml_tables import ConfigFileError, find_line, parse_duration, read_config_file

DEFAULT_CONFIG_PATH = Path("/etc/nodeorch/nodeorch.toml")
DEFAULT_GOSSIP_PORT = GOSSIP_DEFAULT_PORT
DEFAULT_API_PORT = 7947
DEFAULT_REPLICA_PORT = 7948
DEFAULT_API = f"127.0.0.1:{DEFAULT_API_PORT}"
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class NodeSection:
    name: str
    data_dir: Path = Path("/var/lib/nodeorch")
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterSection:
    name: str = "default"
    keyring: Path = Path("/etc/nodeorch/keyring")
    insecure: bool = False
    expect: int = 0
    """Place nothing until this many members (this one included) are seen, or expect_timeout passed."""
    expect_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class GossipSection:
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_GOSSIP_PORT)
    advertise: tuple[str, int] | None = None
    profile: str = "lan"
    seeds: tuple[str, ...] = ()
    discovery: str = "mdns"


@dataclass(frozen=True, slots=True)
class VolumesSection:
    listen: tuple[str, int] | None = None
    """The replica server's address; None: the gossip bind address's host, DEFAULT_REPLICA_PORT."""
    max_concurrent_rebuilds: int = 2


@dataclass(frozen=True, slots=True)
class ApiSection:
    listen: str = DEFAULT_API
    """host:port, or unix:/path for a unix socket."""
    allow_remote: bool = False
    """A non-loopback listen address is refused unless this is set (and then needs a token_file)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host header names accepted besides the listen address and localhost (DNS rebinding guard)."""
    token_file: Path | None = None
    """A file holding the bearer token every request must carry."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    node: NodeSection
    cluster: ClusterSection
    gossip: GossipSection
    api: ApiSection
    desired_path: Path = Path("/etc/nodeorch/desired.toml")
    volumes: VolumesSection = VolumesSection()
    hooks: tuple[HookSpec, ...] = ()

    @property
    def replica_listen(self) -> tuple[str, int]:
        """Where this node's replica server listens: [volumes] listen, else the gossip host."""
        return self.volumes.listen or (self.gossip.bind[0], DEFAULT_REPLICA_PORT)


class _Reader:
    """Takes keys out of one parsed section, checking each; whatever is left over is unknown."""

    def __init__(self, path: Path, text: str, section: str, table: Any) -> None:
        self.path, self.text, self.section = path, text, section
        if not isinstance(table, dict):
            raise ConfigFileError(path, "must be a table", key=f"[{section}]")
        self.table = dict(table)

    def fail(self, key: str, problem: str) -> ConfigFileError:
        qualified = f"{self.section}.{key}" if self.section else key
        return ConfigFileError(self.path, problem, key=qualified, line=find_line(self.text, self.section, key))

    def take(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table.pop(key)
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise self.fail(key, f"expected {_type_name(kind)}, got {_type_name(type(value))} {value!r}")
        return value

    def check(self, key: str, value: Any, ok: bool, problem: str) -> Any:
        if not ok:
            raise self.fail(key, problem)
        return value

    def finish(self) -> None:
        for key in self.table:
            known = ", ".join(_KNOWN[self.section])
            raise self.fail(key, f"unknown key (known keys in [{self.section}]: {known})")


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


_KNOWN = {
    "node": ["name", "data_dir", "labels"],
    "cluster": ["name", "keyring", "insecure", "expect", "expect_timeout"],
    "gossip": ["bind", "advertise", "profile", "seeds", "discovery"],
    "api": ["listen", "allow_remote", "allowed_hosts", "token_file"],
    "desired": ["path"],
    "volumes": ["listen", "max_concurrent_rebuilds"],
    "": ["node", "cluster", "gossip", "api", "volumes", "desired", "hook"],
}


def _duration(reader: _Reader, key: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise reader.fail(key, str(error)) from None


def _address(reader: _Reader, key: str, text: str, default_port: int) -> tuple[str, int]:
    try:
        host, port = parse_address(text, default_port)
    except GossipConfigError as error:
        raise reader.fail(key, str(error)) from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise reader.fail(key, f"{host!r} is not an IP address") from None
    return host, port


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_node_config(path: Path | str, *, hostname: Callable[[], str] = socket.gethostname) -> NodeConfig:
    path = Path(path)
    data = read_config_file(path)
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise ConfigFileError(path, f"not UTF-8 text (byte {error.start})") from None
    return parse_node_config(text, path, hostname=hostname)


def parse_node_config(text: str, path: Path | str = "nodeorch.toml", *,
                      hostname: Callable[[], str] = socket.gethostname) -> NodeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(path, f"not valid TOML: {error}") from None
    top = _Reader(path, text, "", data)

    node = _Reader(path, text, "node", top.take("node", dict, {}))
    name = node.take("name", str, "") or hostname().split(".")[0]
    node.check("name", name, bool(_NAME.match(name)),
               f"{name!r} is not a valid node name (letters, digits, '.', '_', '-'; at most 64)")
    data_dir = Path(node.take("data_dir", str, "/var/lib/nodeorch"))
    node.check("data_dir", data_dir, data_dir.is_absolute(), f"{str(data_dir)!r} must be an absolute path")
    labels = node.take("labels", dict, {})
    node.check("labels", labels, len(labels) <= MAX_LABELS, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        node.check("labels", labels, bool(_LABEL_KEY.match(key)), f"label key {key!r} is not valid")
        node.check("labels", labels, isinstance(value, str) and len(value) <= 128,
                   f"label {key!r} must be a string of at most 128 characters")
    node.finish()

    cluster = _Reader(path, text, "cluster", top.take("cluster", dict, {}))
    cluster_name = cluster.take("name", str, "default")
    cluster.check("name", cluster_name, bool(_NAME.match(cluster_name)), f"{cluster_name!r} is not a valid name")
    keyring = Path(cluster.take("keyring", str, "/etc/nodeorch/keyring"))
    insecure = cluster.take("insecure", bool, False)
    expect = cluster.take("expect", int, 0)
    cluster.check("expect", expect, 0 <= expect <= 10_000, f"{expect}: expected 0 (off) to 10000 members")
    expect_timeout = _duration(cluster, "expect_timeout", cluster.take("expect_timeout", str, "60s"))
    cluster.finish()

    gossip = _Reader(path, text, "gossip", top.take("gossip", dict, {}))
    bind = _address(gossip, "bind", gossip.take("bind", str, f"0.0.0.0:{DEFAULT_GOSSIP_PORT}"), DEFAULT_GOSSIP_PORT)
    advertise_text = gossip.take("advertise", str, "")
    advertise = _address(gossip, "advertise", advertise_text, bind[1]) if advertise_text else None
    if advertise is not None:
        gossip.check("advertise", advertise, not ipaddress.ip_address(advertise[0]).is_unspecified,
                     "must be an address other hosts can reach, not a wildcard")
    profile = gossip.take("profile", str, "lan")
    gossip.check("profile", profile, profile in ("lan", "wan", "local"), f"{profile!r}: expected lan, wan or local")
    seeds = gossip.take("seeds", list, [])
    for seed in seeds:
        gossip.check("seeds", seeds, isinstance(seed, str), f"each seed must be a \"host:port\" string, got {seed!r}")
        try:
            parse_address(seed, bind[1])
        except GossipConfigError as error:
            raise gossip.fail("seeds", str(error)) from None
    discovery = gossip.take("discovery", str, "mdns")
    gossip.check("discovery", discovery, discovery in ("mdns", "none"), f"{discovery!r}: expected mdns or none")
    gossip.finish()

    api = _Reader(path, text, "api", top.take("api", dict, {}))
    listen = api.take("listen", str, DEFAULT_API)
    allow_remote = api.take("allow_remote", bool, False)
    allowed_hosts = api.take("allowed_hosts", list, [])
    for allowed in allowed_hosts:
        api.check("allowed_hosts", allowed_hosts, isinstance(allowed, str) and bool(_HOST_NAME.match(allowed)),
                  f"{allowed!r} is not a host name (letters, digits, '.', '-')")
    token_text = api.take("token_file", str, "")
    token_file = Path(token_text) if token_text else None
    if token_file is not None:
        api.check("token_file", token_text, token_file.is_absolute(), f"{token_text!r} must be an absolute path")
    api.check("allow_remote", allow_remote, not allow_remote or token_file is not None,
              "a status endpoint reachable from other hosts needs [api] token_file (a bearer token)")
    if listen.startswith("unix:"):
        api.check("listen", listen, Path(listen[5:]).is_absolute(), "a unix socket path must be absolute")
    else:
        host, _ = _address(api, "listen", listen, DEFAULT_API_PORT)
        api.check("listen", listen, allow_remote or is_loopback(host),
                  f"{host} is not a loopback address; the status endpoint stays local unless "
                  "[api] allow_remote = true")
    api.finish()

    volumes = _Reader(path, text, "volumes", top.take("volumes", dict, {}))
    replica_listen = volumes.take("listen", str, "")
    replica_address = _address(volumes, "listen", replica_listen, DEFAULT_REPLICA_PORT) if replica_listen else None
    rebuilds = volumes.take("max_concurrent_rebuilds", int, 2)
    volumes.check("max_concurrent_rebuilds", rebuilds, 1 <= rebuilds <= 64, "expected 1 to 64")
    volumes.finish()

    desired = _Reader(path, text, "desired", top.take("desired", dict, {}))
    desired_path = Path(desired.take("path", str, "/etc/nodeorch/desired.toml"))
    desired.finish()
    hooks = parse_hooks(path, text, top.take("hook", list, []))
    top.finish()

    return NodeConfig(
        path=path,
        node=NodeSection(name, data_dir, dict(labels)),
        cluster=ClusterSection(cluster_name, keyring, insecure, expect, expect_timeout),
        gossip=GossipSection(bind, advertise, profile, tuple(seeds), discovery),
        api=ApiSection(listen, allow_remote, tuple(h.lower() for h in allowed_hosts), token_file),
        volumes=VolumesSection(replica_address, rebuilds),
        desired_path=desired_path,
        hooks=hooks,
    )


def render_node_config(
    *,
    name: str,
    data_dir: Path,
    cluster: str,
    keyring: Path,
    bind: str,
    api: str,
    desired: Path,
    seeds: list[str] | tuple[str, ...] = (),
    labels: Mapping[str, str] | None = None,
    discovery: str = "none",
    profile: str = "lan",
    expect: int = 0,
    allowed_hosts: tuple[str, ...] = (),
    token_file: Path | None = None,
) -> str:
    """A nodeorch.toml that load_node_config reads back as given (for `nodeorch dev` and tests)."""

    def q(value: object) -> str:
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string

    table = ", ".join(f"{k} = {q(v)}" for k, v in sorted((labels or {}).items()))
    return f"""\
[node]
name = {q(name)}
data_dir = {q(data_dir)}
labels = {{ {table} }}

[cluster]
name = {q(cluster)}
keyring = {q(keyring)}
expect = {int(expect)}

[gossip]
bind = {q(bind)}
profile = {q(profile)}
seeds = [{", ".join(q(s) for s in seeds)}]
discovery = {q(discovery)}

[api]
listen = {q(api)}
allowed_hosts = [{", ".join(q(h) for h in allowed_hosts)}]
{f"token_file = {q(token_file)}" if token_file else ""}

[desired]
path = {q(desired)}
"""

