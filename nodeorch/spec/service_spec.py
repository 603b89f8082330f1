"""Service specs in desired.toml: their fields, defaults and validation.

Every mistake is reported as `desired.toml:LINE: service[NAME].KEY: problem`, and one mistake
refuses the whole file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodeorch.spec.toml_tables import (
    ConfigFileError,
    TableReader,
    boolean_value,
    choice,
    duration_value,
    integer_in,
    string_table,
    string_value,
    table_line,
)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class HealthSpec:
    kind: str
    port: int = 0
    path: str = "/"
    command: tuple[str, ...] = ()
    interval: float = 2.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    initializing_timeout: float = 60.0
    strategy: str = "recreate"
    quorum: int = 1


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """A volume a service uses, and where its instances see it."""

    volume: str
    path: str
    per_slot: bool = False
    """One volume per slot, named VOLUME-SLOT (declared once, as a template)."""

    @property
    def variable(self) -> str:
        """NODEORCH_VOLUME_<NAME>: the mount point, for process instances (the same in every slot)."""
        return "NODEORCH_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", self.volume.upper())


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    """How a change to a service's spec rolls out: [service.update]."""

    parallelism: int = 1
    """Instances replaced at once (one batch)."""
    delay: float = 0.0
    """Seconds between the end of one batch and the start of the next."""
    order: str = "stop-first"
    """stop-first: the old instance stops, then the new one starts (no two on a node at once;
    forced for services with a volume). start-first: the new one starts beside the old one, which
    stops once the new one runs (and is healthy): no gap, but both must fit on the node at once."""
    failure_action: str = "pause"
    """pause: the update stops cluster-wide until `nodeorch service resume` or a new spec;
    rollback: every replaced instance goes back to the spec it ran before."""
    monitor: float = 5.0
    """A replaced instance must run (and stay healthy) this long before its batch is done; an exit
    or an unhealthy verdict within it fails the update."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    driver: str = "process"
    image: str = ""
    command: tuple[str, ...] = ()
    scale: int = 1
    global_: bool = False
    spread: str = "node"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    restart_delay: float = 1.0
    restart_max_delay: float = 60.0
    stop_grace: float = 10.0
    health: HealthSpec | None = None
    volumes: tuple[VolumeMount, ...] = ()
    update: UpdatePolicy = UpdatePolicy()
    _digest: str = field(default="", init=False, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """Changes whenever anything that shapes a running instance changes (what it runs, its
        environment, health check, volumes, stop grace), and only then: a new scale, selector or
        update policy replaces no instance. Computed once per spec: every services pass reads it
        for every instance in the cluster."""
        if not self._digest:
            shaping = {key: value for key, value in asdict(self).items() if key in _SHAPING}
            blob = json.dumps(shaping, sort_keys=True, default=str).encode()
            object.__setattr__(self, "_digest", hashlib.sha256(blob).hexdigest()[:12])
        return self._digest


_SHAPING = {"name", "driver", "image", "command", "env", "ports", "stop_grace", "health", "volumes"}


def spec_to_json(spec: ServiceSpec) -> dict[str, Any]:
    raw = asdict(spec)
    del raw["_digest"]
    return raw


def spec_from_json(raw: Mapping[str, Any]) -> ServiceSpec:
    """A spec from spec_to_json's output; TypeError or ValueError when it is not one."""
    fields: dict[str, Any] = {k: tuple(v) if k in ("command", "ports") else v for k, v in raw.items()}
    health: dict[str, Any] | None = fields.pop("health", None)
    if health is not None:
        fields["health"] = HealthSpec(**{**health, "command": tuple(health.get("command", ()))})
    fields["volumes"] = tuple(VolumeMount(**m) for m in fields.get("volumes", ()))
    fields["update"] = UpdatePolicy(**fields.get("update", {}))
    return ServiceSpec(**fields)


def _argv(value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value or not all(type(v) is str for v in value):
        raise TypeError("expected a non-empty list of strings (argv)")
    return tuple(value)


def _ports(value: Any) -> tuple[int, ...]:
    if type(value) is not list or not all(type(p) is int and 0 < p < 65536 for p in value):
        raise ValueError("expected a list of ports (1 to 65535)")
    return tuple(value)


_SERVICE_KEYS = ["name", "driver", "image", "command", "scale", "global", "spread", "node_selector", "env",
                 "ports", "restart_delay", "restart_max_delay", "stop_grace", "health", "volumes", "update"]
_UPDATE_KEYS = ["parallelism", "delay", "order", "failure_action", "monitor"]
_MOUNT_KEYS = {"volume", "path", "per_slot"}


def _mounts(value: Any) -> tuple[VolumeMount, ...]:
    if type(value) is not list or not all(type(m) is dict for m in value):
        raise TypeError('expected a list of tables like { volume = "db", path = "/var/lib/db" }')
    mounts: list[VolumeMount] = []
    for number, raw in enumerate(value, start=1):
        unknown = set(raw) - _MOUNT_KEYS
        if unknown:
            raise ValueError(f"entry {number}: unknown key {sorted(unknown)[0]!r} (known: path, per_slot, volume)")
        volume, path, per_slot = raw.get("volume"), raw.get("path"), raw.get("per_slot", False)
        if type(volume) is not str or not volume:
            raise ValueError(f"entry {number}: volume: expected the name of a [[volume]]")
        if type(path) is not str or not path.startswith("/") or "\0" in path:
            raise ValueError(f"entry {number}: path: expected an absolute path, got {path!r}")
        if type(per_slot) is not bool:
            raise ValueError(f"entry {number}: per_slot: expected true or false")
        mounts.append(VolumeMount(volume, path, per_slot))
    if len({m.volume for m in mounts}) != len(mounts) or len({m.path for m in mounts}) != len(mounts):
        raise ValueError("each volume and each path at most once")
    return tuple(mounts)
_HEALTH_KEYS = ["kind", "port", "path", "command", "interval", "timeout", "healthy_threshold",
                "unhealthy_threshold", "initializing_timeout", "strategy", "quorum"]


def parse_service(path: Path, text: str, index: int, raw: dict[str, Any]) -> ServiceSpec:
    s = TableReader(path, text, index, raw)
    if "name" not in s.raw:
        raise ConfigFileError(path, "missing", key=f"service[{index}].name",
                              line=table_line(text, "service", index, ""))
    name = s.take("name", string_value, "")
    if not _NAME.match(name):
        raise s.fail("name", f"{name!r}: lowercase letters, digits and '-', at most 63")
    driver = s.take("driver", choice("process", "docker"), "process")
    image = s.take("image", string_value, "")
    command = s.take("command", _argv, ())
    if driver == "docker" and not image:
        raise s.fail("image", "required for driver = \"docker\"")
    if driver == "process" and not command:
        raise s.fail("command", "required for driver = \"process\" (the argv to run)")
    if driver == "process" and image:
        raise s.fail("image", "only for driver = \"docker\"")
    global_ = s.take("global", boolean_value, False)
    if "scale" in s.raw and global_:
        raise s.fail("scale", "a global service runs one instance per eligible node: remove scale or global")
    scale = s.take("scale", integer_in(0, 1000), 1)
    spread = s.take("spread", choice("node", "none"), "node")
    selector = s.take("node_selector", string_table, {})
    env = s.take("env", string_table, {})
    ports = s.take("ports", _ports, ())
    restart_delay = s.take("restart_delay", duration_value, 1.0)
    restart_max_delay = s.take("restart_max_delay", duration_value, 60.0)
    if restart_max_delay < restart_delay:
        raise s.fail("restart_max_delay", "must not be shorter than restart_delay")
    stop_grace = s.take("stop_grace", duration_value, 10.0)
    health_raw = s.take("health", lambda v: v if type(v) is dict else string_table(v), None)
    volumes = s.take("volumes", _mounts, ())
    update_raw = s.take("update", _table, None)
    s.finish(_SERVICE_KEYS)
    update = UpdatePolicy() if update_raw is None else _update_policy(s, update_raw, bool(volumes))
    health = None
    if health_raw is not None:
        h = TableReader(path, text, index, health_raw)
        h.label, h.section = s.label, "health"
        kind = h.take("kind", choice("http", "tcp", "exec"), None)
        if kind is None:
            raise h.fail("kind", "missing: http, tcp or exec")
        port = h.take("port", integer_in(1, 65535), 0)
        if kind in ("http", "tcp") and not port:
            raise h.fail("port", f"required for kind = \"{kind}\"")
        health = HealthSpec(
            kind=kind,
            port=port,
            path=h.take("path", string_value, "/"),
            command=h.take("command", _argv, ()),
            interval=h.take("interval", duration_value, 2.0),
            timeout=h.take("timeout", duration_value, 2.0),
            healthy_threshold=h.take("healthy_threshold", integer_in(1, 100), 2),
            unhealthy_threshold=h.take("unhealthy_threshold", integer_in(1, 100), 3),
            initializing_timeout=h.take("initializing_timeout", duration_value, 60.0),
            strategy=h.take("strategy", choice("recreate", "recreate_on_quorum", "none"), "recreate"),
            quorum=h.take("quorum", integer_in(0, 1000), 1),
        )
        if kind == "exec" and not health.command:
            raise h.fail("command", "required for kind = \"exec\"")
        h.finish(_HEALTH_KEYS)
    return ServiceSpec(name, driver, image, command, scale, global_, spread, selector, env, ports,
                       restart_delay, restart_max_delay, stop_grace, health, volumes, update)


def _table(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise TypeError("expected a table")
    return value


def _update_policy(s: TableReader, raw: dict[str, Any], has_volumes: bool) -> UpdatePolicy:
    u = TableReader(s.path, s.text, s.index, raw)
    u.label, u.section = s.label, "update"
    policy = UpdatePolicy(
        parallelism=u.take("parallelism", integer_in(1, 1000), 1),
        delay=u.take("delay", duration_value, 0.0),
        order=u.take("order", choice("stop-first", "start-first"), "stop-first"),
        failure_action=u.take("failure_action", choice("pause", "rollback"), "pause"),
        monitor=u.take("monitor", duration_value, 5.0),
    )
    if policy.order == "start-first" and has_volumes:
        raise u.fail("order", "a service with a volume updates stop-first: its volume is mounted on one node "
                              "at a time, so the new instance cannot start before the old one stops")
    u.finish(_UPDATE_KEYS)
    return policy


def parse_services(path: Path, text: str, raw: list[dict[str, Any]]) -> tuple[ServiceSpec, ...]:
    services = [parse_service(path, text, i, item) for i, item in enumerate(raw)]
    seen: set[str] = set()
    for i, service in enumerate(services):
        if service.name in seen:
            raise ConfigFileError(path, "a service of that name is already declared",
                                  key=f"service[{service.name}].name", line=table_line(text, "service", i, "name"))
        seen.add(service.name)
    return tuple(services)
