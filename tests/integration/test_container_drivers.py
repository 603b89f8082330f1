"""One conformance suite for every container driver: the real process driver and the in-memory
one (the Docker driver joins when it lands)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.containers import ContainerDriver, DriverError, InstanceSpec, InstanceState, VolumeBinding
from drivers.containers.docker import DockerDriver
from drivers.containers.memory import MemoryDriver
from drivers.containers.process import ProcessDriver, process_start_ticks

from .conftest import docker_client

SLEEPER = (sys.executable, "-c", "import time, os; print(os.environ['NODEORCH_SLOT'], flush=True); time.sleep(300)")


IMAGE = {"image": ""}


@pytest.fixture(autouse=True)
def no_image_by_default() -> None:
    IMAGE["image"] = ""


@pytest.fixture(params=["process", "memory", "docker"])
def make_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], ContainerDriver]]:
    IMAGE["image"] = ""
    if request.param == "process":
        yield lambda: ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    elif request.param == "memory":
        shared = MemoryDriver()
        yield lambda: shared
    else:
        IMAGE["image"] = request.getfixturevalue("busybox_image")
        node = f"conformance-{tmp_path.name[-12:]}"
        yield lambda: DockerDriver(node, "127.0.0.2")
        remove_containers(node)


def remove_containers(node: str) -> None:
    client = docker_client()
    for container in client.containers.list(all=True, filters={"label": f"io.nodeorch.node={node}"}):
        container.remove(force=True)


def spec(slot: str = "0", digest: str = "d1", command: tuple[str, ...] = SLEEPER) -> InstanceSpec:
    if IMAGE["image"]:  # the docker image has busybox, not python
        command = ("sleep", "300") if command == SLEEPER else command
        return InstanceSpec("web", slot, digest, command, image=IMAGE["image"], driver="docker")
    return InstanceSpec("web", slot, digest, command, env={"GREETING": "hi"})


async def test_start_list_stop(make_driver: Callable[[], ContainerDriver]) -> None:
    driver = make_driver()
    status = await driver.start(spec())
    assert status.state is InstanceState.RUNNING and status.key == "web/0" and status.digest == "d1"
    assert [s.key for s in await driver.instances()] == ["web/0"]
    with pytest.raises(DriverError, match="already runs"):
        await driver.start(spec())
    await driver.stop("web", "0", grace=2)
    assert await driver.instances() == []
    await driver.stop("web", "0", grace=2)  # absent: no error


async def test_a_command_that_cannot_run_is_a_permanent_error(make_driver: Callable[[], ContainerDriver]) -> None:
    driver = make_driver()
    bad = spec(command=())
    if bad.driver == "docker":
        bad = InstanceSpec("web", "0", "d1", ("sleep", "1"), image="nodeorch-test/absent:none", driver="docker")
    with pytest.raises(DriverError) as caught:
        await driver.start(bad)
    assert not caught.value.transient


async def test_a_new_driver_adopts_what_runs(make_driver: Callable[[], ContainerDriver]) -> None:
    first = make_driver()
    started = await first.start(spec())
    (adopted,) = await make_driver().instances()  # as after an agent restart
    assert adopted.state is InstanceState.RUNNING and adopted.ref == started.ref and adopted.digest == "d1"
    await make_driver().stop("web", "0", grace=1)
    assert await first.instances() == []


async def test_the_docker_driver_reports_exit_codes_and_labels(busybox_image: str, tmp_path: Path) -> None:
    node = f"labels-{tmp_path.name[-12:]}"
    driver = DockerDriver(node, "127.0.0.2")
    try:
        crash = InstanceSpec("job", "0", "d9", ("sh", "-c", "exit 3"), image=busybox_image, driver="docker")
        await driver.start(crash)
        for _ in range(100):
            (status,) = await driver.instances()
            if status.state is InstanceState.EXITED:
                break
            await asyncio.sleep(0.1)
        assert status.state is InstanceState.EXITED and status.exit_code == 3
        container = docker_client().containers.get(f"nodeorch-job-0-{node}")
        assert container.labels["io.nodeorch.service"] == "job" and container.labels["io.nodeorch.digest"] == "d9"
        assert container.labels["io.nodeorch.node"] == node and container.labels["io.nodeorch.slot"] == "0"
    finally:
        remove_containers(node)


async def test_the_docker_driver_binds_a_volume_at_its_path(busybox_image: str, tmp_path: Path) -> None:
    node = f"volume-{tmp_path.name[-12:]}"
    driver = DockerDriver(node, "127.0.0.2")
    (tmp_path / "in").write_text("from the host")
    binding = VolumeBinding("NODEORCH_VOLUME_DB", str(tmp_path), "/var/lib/db")
    try:
        await driver.start(InstanceSpec("db", "0", "d1", ("sh", "-c", "cp $NODEORCH_VOLUME_DB/in /var/lib/db/out"),
                                        image=busybox_image, driver="docker", volumes=(binding,)))
        for _ in range(100):
            if (tmp_path / "out").exists():
                break
            await asyncio.sleep(0.1)
        assert (tmp_path / "out").read_text() == "from the host"
    finally:
        remove_containers(node)


async def test_an_unreachable_docker_engine_is_a_clear_transient_error() -> None:
    import docker

    driver = DockerDriver("n", "127.0.0.2", lambda: docker.DockerClient(base_url="unix:///nonexistent/docker.sock"))
    with pytest.raises(DriverError, match="the Docker engine is unreachable") as caught:
        await driver.instances()
    assert caught.value.transient


async def test_an_unreachable_docker_engine_is_asked_again_only_after_a_pause() -> None:
    import docker

    attempts: list[float] = []
    now = [100.0]

    def no_engine() -> Any:
        attempts.append(now[0])
        raise docker.errors.DockerException("connection refused")

    driver = DockerDriver("n", "127.0.0.2", no_engine, clock=lambda: now[0])
    for step in (0.0, 1.0, 1.0, 1.0, 2.5):
        now[0] += step
        with pytest.raises(DriverError, match="the Docker engine is unreachable: connection refused"):
            await driver.instances()
    assert attempts == [100.0, 105.5]


def test_a_stopped_engine_is_reported_unreachable_without_loading_the_docker_sdk(tmp_path: Path) -> None:
    stale = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(stale))  # the socket file stays; nothing listens on it any more
    probe = (
        "import asyncio, sys\n"
        "from drivers.containers import DriverError\n"
        "from drivers.containers.docker import DockerDriver\n"
        "driver = DockerDriver('n', '127.0.0.2')\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        print(asyncio.run(driver.instances()))\n"
        "    except DriverError as error:\n"
        "        print(error)\n"
        "print('sdk loaded' if 'docker' in sys.modules else 'sdk not loaded')\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "DOCKER_HOST": f"unix://{stale}"})
    lines = ran.stdout.splitlines()
    assert len(lines) == 3, ran.stdout + ran.stderr
    assert all("the Docker engine is unreachable" in line for line in lines[:2]), "never 'no instances'"
    assert lines[2] == "sdk not loaded"


async def test_the_process_driver_reports_a_crash_with_its_exit_code(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    await driver.start(spec(command=(sys.executable, "-c", "import sys; sys.exit(3)")))
    for _ in range(100):
        (status,) = await driver.instances()
        if status.state is InstanceState.EXITED:
            break
        await asyncio.sleep(0.05)
    assert status.state is InstanceState.EXITED and status.exit_code == 3


async def test_the_process_driver_passes_env_and_logs_to_the_data_dir(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    script = "import os, sys; print(sys.argv[1], os.environ['GREETING'], os.environ['NODEORCH_SERVICE'], " \
             "os.environ['NODEORCH_NODE'], " \
             "os.environ['NODEORCH_NODE_ADDR'], os.getpgid(0) == os.getpid(), flush=True)"
    await driver.start(spec(command=(sys.executable, "-c", script, "${NODEORCH_SLOT}")))
    log = tmp_path / "logs" / "web-0.log"
    for _ in range(100):
        if "0 hi web node-a 127.0.0.2 True" in log.read_text():
            break
        await asyncio.sleep(0.05)
    assert "0 hi web node-a 127.0.0.2 True" in log.read_text(), "env, ${NAME} in argv, and its own process group"


async def test_the_process_driver_names_each_volume_in_env_and_argv(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    mount = tmp_path / "mounts" / "db-0"
    mount.mkdir(parents=True)
    script = "import os, pathlib, sys; pathlib.Path(sys.argv[1], 'out').write_text(os.environ['NODEORCH_VOLUME_DB'])"
    await driver.start(InstanceSpec("db", "0", "d1", (sys.executable, "-c", script, "${NODEORCH_VOLUME_DB}"),
                                    volumes=(VolumeBinding("NODEORCH_VOLUME_DB", str(mount), "/unused"),)))
    for _ in range(100):
        if (mount / "out").exists():
            break
        await asyncio.sleep(0.05)
    assert (mount / "out").read_text() == str(mount)


async def test_a_new_driver_adopts_a_running_process_and_stops_it(tmp_path: Path) -> None:
    first = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    started = await first.start(spec())
    adopter = ProcessDriver(tmp_path, "node-a", "127.0.0.2")  # as after an agent restart
    (adopted,) = await adopter.instances()
    assert adopted.state is InstanceState.RUNNING and adopted.ref == started.ref
    with pytest.raises(DriverError, match="already runs"):
        await adopter.start(spec())
    await adopter.stop("web", "0", grace=2)
    assert await adopter.instances() == []
    assert process_start_ticks(int(started.ref)) is None, "the adopted process is gone"


async def test_a_recycled_pid_is_not_mistaken_for_the_instance(tmp_path: Path) -> None:
    driver = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    await driver.start(spec())
    record = (tmp_path / "run" / "web-0.json").read_text().replace('"start_ticks": ', '"start_ticks": 1')
    (tmp_path / "run" / "web-0.json").write_text(record)
    (status,) = await ProcessDriver(tmp_path, "node-a", "127.0.0.2").instances()
    assert status.state is InstanceState.EXITED, "same pid, other start time: not ours"
    await asyncio.wait_for(driver.stop("web", "0", grace=1), 10)  # its own child is still stopped


async def test_stop_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = (sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(300)")
    driver = ProcessDriver(tmp_path, "node-a", "127.0.0.2")
    status = await driver.start(spec(command=stubborn))
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await driver.stop("web", "0", grace=0.5)
    assert 0.4 <= loop.time() - began < 5
    assert process_start_ticks(int(status.ref)) is None
