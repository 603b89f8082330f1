"""One conformance suite for both attachers: the real one (nbdfuse, a loop device and ext4 on a
volume served by a real engine and replica servers) and the in-memory twin the reconciler tests use.
Every attachment is torn down afterwards, whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.attach import Attacher, AttachError, MemoryAttacher
from drivers.attach.fuse_loop import FuseLoopAttacher, missing_tools, mounts_under, release_all

from .volumes import Engine, run, volume_rig

Hold = Callable[[Path], contextlib.AbstractContextManager[None]]


class Rig:
    def __init__(self, attacher: Attacher, export: Path, hold: Hold) -> None:
        self.attacher = attacher
        self.export = export
        self.hold = hold


@contextlib.contextmanager
def _open_file(where: Path) -> Iterator[None]:
    with (where / "held").open("w"):
        yield


@pytest.fixture(params=["memory", "fuse-loop"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    if request.param == "memory":
        memory = MemoryAttacher(tmp_path / "memory")
        export = tmp_path / "vol.sock"
        export.touch()

        @contextlib.contextmanager
        def busy(where: Path) -> Iterator[None]:
            memory.busy.add(where.name)
            try:
                yield
            finally:
                memory.busy.discard(where.name)

        yield Rig(memory, export, busy)
        return
    if os.geteuid() != 0:
        pytest.fail("attaching a volume needs root: run make test as root")
    if missing := missing_tools():
        pytest.fail(f"attaching a volume needs {', '.join(missing)} (make test installs them as root)")
    with volume_rig(tmp_path / "rig") as volumes:
        engine = volumes.start_engine(name="vol", size="64MiB")
        try:
            yield Rig(FuseLoopAttacher(tmp_path / "node"), engine.socket, _open_file)
        finally:
            release_all(tmp_path / "node")
        assert not mounts_under(tmp_path), "an attachment was left behind"


async def test_first_attach_makes_a_filesystem_that_keeps_files_across_detach(rig: Rig) -> None:
    where = await rig.attacher.attach("vol", rig.export)
    assert rig.attacher.attached() == {"vol": where}
    (where / "note").write_text("kept")
    assert await rig.attacher.attach("vol", rig.export) == where  # attached already: nothing changes
    await rig.attacher.detach("vol")
    assert rig.attacher.attached() == {}
    assert not (where / "note").exists() or isinstance(rig.attacher, MemoryAttacher)
    where = await rig.attacher.attach("vol", rig.export)
    assert (where / "note").read_text() == "kept"
    await rig.attacher.detach("vol")
    await rig.attacher.detach("vol")  # detached already: no error


async def test_a_volume_in_use_is_not_detached(rig: Rig) -> None:
    where = await rig.attacher.attach("vol", rig.export)
    with rig.hold(where), pytest.raises(AttachError, match="vol"):
        await rig.attacher.detach("vol")
    assert rig.attacher.attached() == {"vol": where}
    await rig.attacher.detach("vol")
    assert rig.attacher.attached() == {}


async def test_no_export_is_a_clear_error(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(AttachError, match="no NBD export"):
        await rig.attacher.attach("other", tmp_path / "missing.sock")
    assert rig.attacher.attached() == {}


def _kill_fuse(folder: Path) -> list[int]:
    listed = run("pgrep", "-f", f"nbdfuse {folder}")
    for pid in listed.stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    return [int(pid) for pid in listed.stdout.split()]


async def test_after_an_unclean_detach_another_node_checks_and_mounts_it_with_synced_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.fail("attaching a volume needs root: run make test as root")
    if missing := missing_tools():
        pytest.fail(f"attaching a volume needs {', '.join(missing)} (make test installs them as root)")
    with volume_rig(tmp_path / "rig") as volumes:
        engine: Engine = volumes.start_engine(name="vol", size="64MiB")
        first, second = FuseLoopAttacher(tmp_path / "a"), FuseLoopAttacher(tmp_path / "b")
        try:
            where = await first.attach("vol", engine.socket)
            with (where / "synced").open("wb") as out:
                out.write(b"x" * 100_000)
                out.flush()
                os.fsync(out.fileno())
            killed = _kill_fuse(tmp_path / "a")  # the node dies with the filesystem mounted
            release_all(tmp_path / "a")
            for pid in killed:  # a child of this process (the attacher started it)
                await asyncio.to_thread(os.waitpid, pid, 0)
            where = await second.attach("vol", engine.socket)
            assert (where / "synced").read_bytes() == b"x" * 100_000
            assert "was not detached cleanly; fsck: vol: recovering journal" in caplog.text
            await second.detach("vol")
        finally:
            release_all(tmp_path / "a")
            release_all(tmp_path / "b")
        assert not mounts_under(tmp_path), "an attachment was left behind"


CHILD = """
import asyncio, sys
from pathlib import Path
from drivers.attach.fuse_loop import FuseLoopAttacher
attacher = FuseLoopAttacher(Path(sys.argv[1]), host_namespace=Path(sys.argv[3]))
where = asyncio.run(attacher.attach("vol", Path(sys.argv[2])))
(where / "from-the-agent").write_text("hello")
print(where, flush=True)
"""


def test_an_agent_in_a_mount_namespace_of_its_own_mounts_where_the_host_sees_it(tmp_path: Path) -> None:
    """As under the systemd unit (ProtectSystem= and PrivateTmp= give the agent a namespace of its
    own, a slave of the host's): the attach runs in the host's namespace, so the host (and Docker)
    see the mount. The host here is this test's namespace (PID 1's is out of reach on test beds)."""
    if os.geteuid() != 0:
        pytest.fail("attaching a volume needs root: run make test as root")
    if missing := missing_tools():
        pytest.fail(f"attaching a volume needs {', '.join(missing)} (make test installs them as root)")
    host = tmp_path / "host"
    host.mkdir()
    # what systemd does to / on every host (and this test bed does not): shared propagation
    assert run("mount", "--bind", str(host), str(host)).returncode == 0
    try:
        assert run("mount", "--make-shared", str(host)).returncode == 0
        attach_from_a_namespace_of_its_own(host)
    finally:
        release_all(host / "node")
        run("umount", "-l", str(host))
    assert not mounts_under(tmp_path), "an attachment was left behind"


def attach_from_a_namespace_of_its_own(host: Path) -> None:
    with volume_rig(host / "rig") as volumes:
        engine = volumes.start_engine(name="vol", size="64MiB")
        try:
            result = run("unshare", "--mount", "--propagation", "slave", sys.executable, "-c", CHILD,
                         str(host / "node"), str(engine.socket), f"/proc/{os.getpid()}/ns/mnt")
            assert result.returncode == 0, result.stdout + result.stderr
            where = Path(result.stdout.strip())
            assert where.resolve() in mounts_under(where), "the host sees the agent's mount"
            assert (where / "from-the-agent").read_text() == "hello"
        finally:
            release_all(host / "node")
