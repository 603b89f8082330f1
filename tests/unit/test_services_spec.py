"""Services in desired.toml: defaults, and the precise error of each class of mistake."""

from __future__ import annotations

import json

import pytest

from nodeorch.spec.desired import parse_desired
from nodeorch.spec.service_spec import UpdatePolicy, spec_from_json, spec_to_json
from nodeorch.spec.toml_tables import ConfigFileError

GOOD = b"""
revision = 7
[[service]]
name = "web"
driver = "process"
command = ["python3", "-m", "http.server", "8080"]
scale = 2
env = { MODE = "demo" }
ports = [8080]
[service.health]
kind = "http"
port = 8080
path = "/"
interval = "500ms"
strategy = "recreate_on_quorum"
quorum = 1
[service.update]
parallelism = 2
delay = "5s"
order = "start-first"
failure_action = "rollback"
monitor = "30s"

[[service]]
name = "agent-sidecar"
driver = "docker"
image = "busybox:local"
command = ["sleep", "3600"]
global = true
node_selector = { disk = "ssd" }
"""


def test_a_good_file_is_read_with_defaults() -> None:
    desired = parse_desired(GOOD)
    web, sidecar = desired.services
    assert web.scale == 2 and web.spread == "node" and web.env == {"MODE": "demo"} and web.ports == (8080,)
    assert web.health is not None and web.health.interval == 0.5 and web.health.unhealthy_threshold == 3
    assert sidecar.global_ and sidecar.node_selector == {"disk": "ssd"} and sidecar.driver == "docker"
    assert web.digest != parse_desired(GOOD.replace(b'"demo"', b'"prod"')).services[0].digest
    assert web.update == UpdatePolicy(parallelism=2, delay=5.0, order="start-first", failure_action="rollback",
                                      monitor=30.0)
    assert sidecar.update == UpdatePolicy(), "stop-first, one at a time, pause on failure"
    assert web.digest == parse_desired(GOOD.replace(b'parallelism = 2', b'parallelism = 1')).services[0].digest


def test_a_remembered_spec_reads_back_the_same() -> None:
    for spec in parse_desired(GOOD).services:
        again = spec_from_json(json.loads(json.dumps(spec_to_json(spec))))
        assert again == spec and again.digest == spec.digest


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ((b'scale = 2', b'scale = "two"'), "desired.toml:7: service[web].scale: expected an integer from 0 to 1000"),
        ((b'driver = "process"', b'driver = "podman"'), "service[web].driver: 'podman': expected process or docker"),
        ((b'command = ["python3", "-m", "http.server", "8080"]\n', b''),
         "service[web].command: required for driver = \"process\""),
        ((b'image = "busybox:local"\n', b''), "service[agent-sidecar].image: required for driver = \"docker\""),
        ((b'interval = "500ms"', b'interval = "soon"'),
         "desired.toml:14: service[web].health.interval: 'soon' is not a duration"),
        ((b'kind = "http"', b'kind = "icmp"'), "service[web].health.kind: 'icmp': expected http or tcp or exec"),
        ((b'port = 8080', b'port = 80800'), "service[web].health.port: expected an integer from 1 to 65535"),
        ((b'ports = [8080]', b'ports = [0]'), "service[web].ports: expected a list of ports"),
        ((b'name = "agent-sidecar"', b'name = "web"'), "service[web].name: a service of that name is already declared"),
        ((b'global = true', b'global = true\nscale = 3'), "service[agent-sidecar].scale: a global service runs one"),
        ((b'global = true', b'global = "false"'), "service[agent-sidecar].global: expected true or false, got 'false'"),
        ((b'spread = "node"', b''), None),
        ((b'env = { MODE = "demo" }', b'env = { MODE = 1 }'), "service[web].env: expected a table of strings"),
        ((b'name = "web"', b'name = "Web_1"'), "service[Web_1].name: 'Web_1': lowercase letters"),
        ((b'quorum = 1', b'quorum = 1\nretries = 3'), "desired.toml:17: service[web].health.retries: unknown key"),
        ((b'order = "start-first"', b'order = "blue-green"'),
         "desired.toml:20: service[web].update.order: 'blue-green': expected stop-first or start-first"),
        ((b'parallelism = 2', b'parallelism = 0'), "service[web].update.parallelism: expected an integer from 1"),
        ((b'monitor = "30s"', b'monitor = "30s"\nwatch = 1'), "service[web].update.watch: unknown key"),
        ((b'ports = [8080]', b'ports = [8080]\nvolumes = [{ volume = "db", path = "/d" }]'),
         "service[web].update.order: a service with a volume updates stop-first"),
    ],
)
def test_each_class_of_mistake_has_its_precise_error(patch: tuple[bytes, bytes], expected: str | None) -> None:
    data = GOOD.replace(*patch)
    if expected is None:
        parse_desired(data)
        return
    with pytest.raises(ConfigFileError) as caught:
        parse_desired(data)
    assert expected in str(caught.value)


def test_spec_check_uses_the_same_validator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_bytes(GOOD)
    bad.write_bytes(GOOD.replace(b"scale = 2", b"scale = -1"))
    ok = subprocess.run([sys.executable, "-m", "nodeorch", "spec", "check", str(good)], capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0 and "revision 7" in ok.stdout and "2 services" in ok.stdout
    refused = subprocess.run([sys.executable, "-m", "nodeorch", "spec", "check", str(bad)], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 2 and "bad.toml:7: service[web].scale" in refused.stderr
