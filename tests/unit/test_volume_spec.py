"""Volumes in desired.toml: defaults, per-slot volumes, and the precise error of each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeorch.spec.desired import parse_desired
from nodeorch.spec.desired_watcher import DesiredWatcher
from nodeorch.spec.toml_tables import ConfigFileError
from nodeorch.state.event_log import EventLog

GOOD = b"""
revision = 1
[[volume]]
name = "db"
size = "2GiB"
node_selector = { disk = "ssd" }
replenish_wait = "10m"

[[volume]]
name = "cache"
size = "512MiB"
replicas = 2

[[service]]
name = "db"
command = ["postgres"]
volumes = [{ volume = "db", path = "/var/lib/db" }]

[[service]]
name = "cache"
command = ["redis-server"]
scale = 3
volumes = [{ volume = "cache", path = "/data", per_slot = true }]
"""


def test_volumes_are_read_with_defaults_and_per_slot_ones_expanded() -> None:
    desired = parse_desired(GOOD)
    by_name = {v.name: v for v in desired.volumes}
    assert sorted(by_name) == ["cache-0", "cache-1", "cache-2", "db"]
    db = by_name["db"]
    assert (db.size, db.replicas, db.replica_timeout, db.replenish_wait) == (2 << 30, 3, 8.0, 600.0)
    assert db.node_selector == {"disk": "ssd"}
    assert by_name["cache-2"].replicas == 2 and by_name["cache-2"].size == 512 << 20
    mount = desired.services[1].volumes[0]
    assert mount.per_slot and mount.path == "/data" and mount.variable == "NODEORCH_VOLUME_CACHE"


def refused(text: str) -> str:
    with pytest.raises(ConfigFileError) as caught:
        parse_desired(text.encode())
    return str(caught.value)


VOLUME = '[[volume]]\nname = "db"\nsize = "1GiB"\n'
USER_A = '[[service]]\nname = "a"\ncommand = ["x"]\nvolumes = [{ volume = "db", path = "/d" }]\n'


@pytest.mark.parametrize(("text", "expected"), [
    ('revision = 1\n[[volume]]\nname = "db"\n', 'desired.toml:2: volume[db].size: missing'),
    ('revision = 1\n[[volume]]\nname = "db"\nsize = "1GB"\n', "volume[db].size: '1GB' is not a size"),
    ('revision = 1\n[[volume]]\nname = "Db"\nsize = "1GiB"\n', "desired.toml:3: volume[Db].name: 'Db'"),
    ('revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\nreplicas = 0\n', "desired.toml:5: volume[db].replicas"),
    ('revision = 1\n[[volume]]\nname = "db"\nsize = "1GiB"\nsnapshots = 3\n', "volume[db].snapshots: unknown key"),
    ('revision = 1\n' + VOLUME + VOLUME, "desired.toml:6: volume[db].name: a volume of that name is already"),
    ('revision = 1\n[[service]]\nname = "a"\ncommand = ["x"]\nvolumes = [{ volume = "db", path = "/d" }]\n',
     "desired.toml:5: service[a].volumes: volume 'db' is not declared"),
    ('revision = 1\n' + VOLUME + '[[service]]\nname = "a"\ncommand = ["x"]\nscale = 2\n'
     'volumes = [{ volume = "db", path = "/d" }]\n', "service[a].volumes: scale 2 would share volume 'db'"),
    ('revision = 1\n' + VOLUME + USER_A + USER_A.replace('"a"', '"b"'),
     "service[b].volumes: volume 'db' is already used by service 'a'"),
    ('revision = 1\n' + VOLUME + '[[service]]\nname = "a"\ncommand = ["x"]\nglobal = true\n'
     'volumes = [{ volume = "db", path = "/d" }]\n', "a global service cannot use a volume"),
    ('revision = 1\n' + VOLUME + USER_A.replace('"/d"', '"d"'),
     "service[a].volumes: entry 1: path: expected an absolute path"),
])
def test_each_mistake_is_refused_naming_the_line_and_key(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_a_volume_that_shrinks_is_refused_and_the_last_good_state_kept(tmp_path: Path) -> None:
    path = tmp_path / "desired.toml"
    path.write_bytes(GOOD)
    watcher = DesiredWatcher("n1", path, EventLog())
    assert watcher.reload(force=True)
    path.write_bytes(GOOD.replace(b'size = "2GiB"', b'size = "1GiB"').replace(b"revision = 1", b"revision = 2"))
    assert watcher.reload(force=True)
    assert "volume[db].size" in watcher.status.error and "never shrink" in watcher.status.error
    assert watcher.status.state is not None and watcher.status.state.revision == 1
    path.write_bytes(GOOD.replace(b'size = "2GiB"', b'size = "4GiB"').replace(b"revision = 1", b"revision = 3"))
    assert watcher.reload(force=True) and watcher.status.state.revision == 3 and not watcher.status.error
