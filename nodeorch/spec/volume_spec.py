"""Volume specs in desired.toml (`[[volume]]`) and the volumes services use, checked together.

Mistakes are reported as `desired.toml:LINE: volume[NAME].KEY: problem` (or `service[NAME].volumes`)
and refuse the whole file. A volume that disappears from the file is not touched here: the cluster
keeps its replicas until `nodeorch volume delete`, so a typo never destroys data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.volumes._errors import VolumeError
from drivers.volumes._sizes import parse_size
from nodeorch.spec.service_spec import ServiceSpec, VolumeMount
from nodeorch.spec.toml_tables import (
    ConfigFileError,
    TableReader,
    duration_value,
    integer_in,
    string_table,
    string_value,
)

MAX_VOLUME_NAME = 64
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_VOLUME_KEYS = ["name", "size", "replicas", "node_selector", "replica_timeout", "replenish_wait"]


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    name: str
    size: int
    replicas: int = 3
    node_selector: Mapping[str, str] = field(default_factory=dict)
    replica_timeout: float = 8.0
    replenish_wait: float = 600.0
    """How long a lost replica may come back (and catch up) before a new one is built."""


def _size(value: Any) -> int:
    try:
        return parse_size(string_value(value))
    except VolumeError as error:
        raise ValueError(str(error)) from None


def parse_volume(path: Path, text: str, index: int, raw: dict[str, Any]) -> VolumeSpec:
    v = TableReader(path, text, index, raw, kind="volume")
    if "name" not in v.raw:
        raise v.fail("name", "missing")
    name = v.take("name", string_value, "")
    if not _NAME.match(name):
        raise v.fail("name", f"{name!r}: lowercase letters, digits and '-', at most {MAX_VOLUME_NAME}")
    if "size" not in v.raw:
        raise v.fail("size", "missing (like \"10GiB\")")
    spec = VolumeSpec(
        name=name,
        size=v.take("size", _size, 0),
        replicas=v.take("replicas", integer_in(1, 9), 3),
        node_selector=v.take("node_selector", string_table, {}),
        replica_timeout=v.take("replica_timeout", duration_value, 8.0),
        replenish_wait=v.take("replenish_wait", duration_value, 600.0),
    )
    if spec.replica_timeout <= 0:
        raise v.fail("replica_timeout", "must be longer than 0s")
    v.finish(_VOLUME_KEYS)
    return spec


def volume_for_slot(mount: VolumeMount, slot: str) -> str:
    """The volume a service's slot uses: the declared one, or one per slot (`db-0`, `db-1`, ...)."""
    return f"{mount.volume}-{slot}" if mount.per_slot else mount.volume


def expand_volumes(volumes: tuple[VolumeSpec, ...], services: tuple[ServiceSpec, ...]) -> tuple[VolumeSpec, ...]:
    """Every volume the cluster keeps: the declared ones, with each per-slot one (declared as a
    template) expanded into one volume per slot of the service that uses it."""
    per_slot = {m.volume: s.scale for s in services for m in s.volumes if m.per_slot}
    expanded: list[VolumeSpec] = []
    for volume in volumes:
        if volume.name not in per_slot:
            expanded.append(volume)
            continue
        for slot in range(per_slot[volume.name]):
            expanded.append(VolumeSpec(f"{volume.name}-{slot}", volume.size, volume.replicas,
                                       volume.node_selector, volume.replica_timeout, volume.replenish_wait))
    return tuple(sorted(expanded, key=lambda v: v.name))


def parse_volumes(path: Path, text: str, raw: list[dict[str, Any]],
                  services: tuple[ServiceSpec, ...]) -> tuple[VolumeSpec, ...]:
    """The declared volumes, checked against each other and against the services that use them;
    returns them expanded (see `expand_volumes`)."""
    volumes = [parse_volume(path, text, i, item) for i, item in enumerate(raw)]
    declared: dict[str, VolumeSpec] = {}
    for i, volume in enumerate(volumes):
        if volume.name in declared:
            raise TableReader(path, text, i, {"name": volume.name}, kind="volume").fail(
                "name", "a volume of that name is already declared")
        declared[volume.name] = volume
    used_by: dict[str, str] = {}
    for index, service in enumerate(services):
        where = TableReader(path, text, index, {"name": service.name})
        for mount in service.volumes:
            if mount.volume not in declared:
                raise where.fail("volumes", f"volume {mount.volume!r} is not declared "
                                            f"([[volume]] name = {mount.volume!r})")
            if mount.volume in used_by:
                raise where.fail("volumes", f"volume {mount.volume!r} is already used by service "
                                            f"{used_by[mount.volume]!r}; a volume has one user")
            used_by[mount.volume] = service.name
            if service.global_:
                raise where.fail("volumes", "a global service cannot use a volume (it has no fixed number of "
                                            "instances)")
            if service.scale > 1 and not mount.per_slot:
                raise where.fail("volumes", f"scale {service.scale} would share volume {mount.volume!r} between "
                                            "instances; add per_slot = true for one volume per slot")
            if mount.per_slot and len(volume_for_slot(mount, str(max(service.scale - 1, 0)))) > MAX_VOLUME_NAME:
                raise where.fail("volumes", f"per-slot volumes of {mount.volume!r} would have names over "
                                            f"{MAX_VOLUME_NAME} characters")
    return expand_volumes(tuple(volumes), services)


def check_growth(before: tuple[VolumeSpec, ...], after: tuple[VolumeSpec, ...], path: Path) -> None:
    """A volume never shrinks: a new file that makes one smaller is refused (its data would not fit)."""
    sizes = {v.name: v.size for v in before}
    for volume in after:
        if volume.name in sizes and volume.size < sizes[volume.name]:
            raise ConfigFileError(path, f"{volume.size} bytes is smaller than the volume's {sizes[volume.name]}: "
                                        "volumes can grow, never shrink", key=f"volume[{volume.name}].size")
