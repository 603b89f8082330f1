"""The composition root: builds the agent from its config and owns every long-lived resource.

Start-up order: keyring, gossip node, status endpoint, discovery, first document, joins, then
READY=1. Shutdown runs in reverse through an AsyncExitStack: leave the cluster (bounded), stop
discovery, stop the endpoint, close the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import gc
import ipaddress
import logging
import random
import secrets
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from drivers.containers import InstanceSpec
from drivers.containers.docker import DockerDriver
from drivers.containers.process import ProcessDriver
from gossip import (
    AppStateEvent,
    BadEventName,
    EventStream,
    GossipError,
    GossipNode,
    JoinError,
    Keyring,
    Member,
    MemberEvent,
    MemberState,
    PayloadTooLarge,
    UserEvent,
    profile,
)
from nodeorch import __version__
from nodeorch.core.backoff import BackoffPolicy
from nodeorch.core.beat import Beat
from nodeorch.core.placement import Assignment
from nodeorch.core.replica_placement import ReplicaPlan
from nodeorch.errors import NodeorchError
from nodeorch.faces.event_hooks import HookRunner
from nodeorch.faces.http_api import ApiServer, UserEventError
from nodeorch.reconcile.engine_keeper import EngineKeeper
from nodeorch.reconcile.job_table import JobTable
from nodeorch.reconcile.replica_server_keeper import ReplicaServerKeeper
from nodeorch.reconcile.rolling_update import Rollout
from nodeorch.reconcile.service_runner import ServiceRunner
from nodeorch.reconcile.volume_keeper import VolumeKeeper, volume_attacher
from nodeorch.spec.desired import DesiredState, DesiredStatus
from nodeorch.spec.desired_watcher import DesiredWatcher
from nodeorch.spec.node_config import NodeConfig, is_loopback
from nodeorch.spec.secret_files import KeyringFileError, load_keyring, load_token
from nodeorch.spec.service_spec import ServiceSpec
from nodeorch.state.document_publisher import DocumentPublisher
from nodeorch.state.document_store import DocumentStore
from nodeorch.state.event_log import EventLog
from nodeorch.state.node_document import NodeDocument, encode_labels
from nodeorch.state.records import (
    EngineRecord,
    HealthVerdict,
    InstanceRecord,
    ReplicaRecord,
    UpdateMark,
    VolumeDeletion,
)
from nodeorch.systemd import keep_alive, notify, watchdog_interval

log = logging.getLogger(__name__)

LEAVE_TIMEOUT = 5.0
MAX_META = 512
JOIN_RETRY = BackoffPolicy(initial=0.5, maximum=15.0)


def release_startup_memory() -> None:
    """Hand the memory freed after start-up (import-time garbage) back to the OS: the agent runs on
    every host for months, and glibc keeps freed heap pages otherwise. A no-op without glibc."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class AgentError(NodeorchError):
    """The agent cannot start: a config, keyring or bind problem, with what to do about it."""


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.node.name
        self.events = EventLog()
        self.documents = DocumentStore(self.name)
        self.draining = False
        self.started_at = time.time()
        self.boot_id = secrets.token_hex(8)
        self._beat = Beat(phase=random.random())
        """When the periodic work wakes: all of it at once, at this agent's own instant of each second."""
        self._desired = DesiredWatcher(self.name, config.desired_path, self.events, self._beat)
        self._node: GossipNode | None = None
        self._publisher: DocumentPublisher | None = None
        self.jobs = JobTable()
        self._runner: ServiceRunner | None = None
        self._volumes: VolumeKeeper | None = None
        self.hooks = HookRunner(self.name, config.hooks, self.events)

    # Views for the status endpoint -------------------------------------------------------------------

    @property
    def desired(self) -> DesiredStatus:
        return self._desired.status

    @property
    def node(self) -> GossipNode:
        if self._node is None:
            raise RuntimeError("the agent is not running")
        return self._node

    def gossip_stats(self) -> Mapping[str, int]:
        return self.node.stats()

    def members(self) -> list[Member]:
        return sorted(self.node.members(), key=lambda m: m.name)

    def stale(self, name: str) -> bool:
        member = self.node.member(name)
        return member is None or member.state in (MemberState.DEAD, MemberState.LEFT)

    def differing_digests(self) -> list[str]:
        own = self.desired.state.digest if self.desired.state else ""
        return sorted(
            name for name, doc in self.documents.items()
            if doc.desired_digest != own and not self.stale(name)
        )

    # Lifetime ----------------------------------------------------------------------------------------

    def _keyring(self) -> Keyring | None:
        """The cluster keyring; plaintext only when configured insecure, or when gossip stays on
        loopback and no keyring file exists (a single-host test bed)."""
        cluster = self.config.cluster
        if cluster.insecure:
            log.warning("%s: gossip runs in plaintext ([cluster] insecure = true)", self.name)
            return None
        if not cluster.keyring.exists() and is_loopback(self.config.gossip.bind[0]):
            log.warning("%s: no keyring at %s; plaintext gossip on loopback only", self.name, cluster.keyring)
            return None
        try:
            return load_keyring(cluster.keyring)
        except ValueError as error:
            raise AgentError(str(error)) from None

    def _api_token(self) -> str:
        path = self.config.api.token_file
        if path is None:
            return ""
        try:
            return load_token(path)
        except KeyringFileError as error:
            raise AgentError(f"[api] token_file: {error}") from None

    def _meta(self) -> bytes:
        """Labels ride in the gossip metadata, so every member table shows them."""
        meta = encode_labels(self.config.node.labels, self.boot_id)
        if len(meta) > MAX_META:
            raise AgentError(f"{self.config.path}: node.labels take {len(meta)} bytes encoded; the limit is {MAX_META}")
        return meta

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        keyring = self._keyring()
        token = self._api_token()
        self._desired.reload(force=True)
        async with AsyncExitStack() as stack:
            try:
                self._node = await stack.enter_async_context(
                    GossipNode(
                        profile(config.gossip.profile),
                        name=self.name,
                        bind=config.gossip.bind,
                        advertise=config.gossip.advertise,
                        cluster=config.cluster.name,
                        keyring=keyring,
                        insecure=keyring is None,
                        meta=self._meta(),
                    )
                )
            except GossipError as error:
                raise AgentError(f"gossip: {error}") from None
            stream = self.node.events()
            api = await stack.enter_async_context(
                ApiServer(self, config.api.listen, allowed_hosts=config.api.allowed_hosts, token=token))
            discovery = None
            if config.gossip.discovery == "mdns":
                # Imported here: zeroconf costs memory that a node without mDNS should not pay.
                from nodeorch.discovery import Discovery

                discovery = await stack.enter_async_context(
                    Discovery(self.name, config.cluster.name, self.node.local_addr, self._discovered)
                )
            config.node.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            host = self.node.local_addr[0]
            self._runner = ServiceRunner(self, {
                "process": ProcessDriver(config.node.data_dir, self.name, host),
                "docker": DockerDriver(self.name, host),
            }, expect=config.cluster.expect, expect_timeout=config.cluster.expect_timeout,
                state_dir=config.node.data_dir / "services", beat=self._beat)
            keyring_file = None if keyring is None else config.cluster.keyring
            replica_server = ReplicaServerKeeper(config.node.data_dir, config.replica_listen, config.cluster.name,
                                                 keyring_file, beat=self._beat)
            engines = EngineKeeper(config.node.data_dir, config.cluster.name, keyring_file)
            self._volumes = VolumeKeeper(self, engines, *volume_attacher(config.node.data_dir / "volumes"),
                                         folder=config.node.data_dir / "volumes",
                                         replica_server=self._replica_address(local=True), beat=self._beat)
            self._publisher = DocumentPublisher(self._first_document(), self.documents, self.events,
                                                self.node.set_app_state)
            # The engines still running from before a restart go into the first document, so no
            # other node takes their volumes for unserved while this agent was away.
            await self.publish(instances=await self._runner.adopt(), engines=engines.records({}),
                               updates=self._runner.marks())
            joined = await self._join_seeds()
            release_startup_memory()
            notify("READY=1\nSTATUS=joined; serving on " + api.where)
            self.events.append("agent.started", node=self.name, api=api.where)
            log.info("%s: agent running: gossip %s:%s, status endpoint %s", self.name,
                     *self.node.local_addr, api.where)
            async with asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self._pump(stream)),
                    tasks.create_task(self._desired.watch(self._desired_changed)),
                    tasks.create_task(self._runner.run()),
                    tasks.create_task(replica_server.run(self._volumes_desired, self._publish_replicas)),
                    tasks.create_task(self._volumes.run()),
                    tasks.create_task(self.hooks.run()),
                ]
                if not joined:
                    workers.append(tasks.create_task(self._keep_joining()))
                interval = watchdog_interval()
                if interval is not None:
                    workers.append(tasks.create_task(keep_alive(interval)))
                await stop.wait()
                notify("STOPPING=1")
                log.info("%s: stopping: no new jobs; leaving the cluster", self.name)
                self.events.append("agent.stopping", node=self.name)
                self._runner.begin_shutdown()
                for worker in workers:
                    worker.cancel()
            with contextlib.suppress(GossipError):
                left = await self.node.leave(timeout=LEAVE_TIMEOUT)
                log.info("%s: left the cluster%s", self.name, "" if left else " (not confirmed in time)")
            stream.close()
            del discovery

    async def _join_seeds(self) -> bool:
        """One attempt through every seed; True if one answered (or there are none)."""
        seeds = list(self.config.gossip.seeds)
        if not seeds:
            return True
        try:
            joined = await self.node.join(seeds)
        except JoinError as error:
            log.warning("%s: %s; retrying", self.name, error)
            self.events.append("agent.join_failed", error=str(error))
            return False
        log.info("%s: joined through %d of %d seeds", self.name, joined, len(seeds))
        return True

    async def _keep_joining(self) -> None:
        """Until a first join succeeds, retry soon and then less often (0.5 s doubling to 15 s):
        hosts booting together should not wait a whole rejoin interval for each other."""
        failures = 0
        while not self.node.alive_peers() and not await self._join_seeds():
            failures += 1
            await asyncio.sleep(JOIN_RETRY.delay(failures))

    async def _discovered(self, addr: tuple[str, int]) -> None:
        known = {m.addr for m in self.node.members()}
        if addr in known:
            return
        try:
            await self.node.join([addr])
            log.info("%s: joined %s:%s found by mDNS", self.name, *addr)
        except JoinError as error:
            log.debug("%s: discovered peer %s:%s did not answer: %s", self.name, *addr, error)

    # Documents -----------------------------------------------------------------------------------------

    def _replica_address(self, local: bool = False) -> str:
        """HOST:PORT of this node's replica server, as others reach it (or as this node does)."""
        host, port = self.config.replica_listen
        if ipaddress.ip_address(host).is_unspecified:  # listening everywhere
            host = "127.0.0.1" if local else self.node.local_addr[0]
        return f"{host}:{port}"

    def _first_document(self) -> NodeDocument:
        volumes = self._volumes
        return NodeDocument(name=self.name, version=0, boot_id=self.boot_id, agent_version=__version__,
                            labels=dict(self.config.node.labels), api=self.config.api.listen,
                            replica_addr=self._replica_address(),
                            attach_error=volumes.attach_error if volumes else "",
                            max_rebuilds=self.config.volumes.max_concurrent_rebuilds,
                            deletions=volumes.requests.deletions if volumes else ())

    async def publish(self, **sections: Any) -> None:
        """Gossip this node's document with its current header and the given sections."""
        if self._publisher is None:
            raise RuntimeError("the agent is not running")
        desired = self.desired.state
        await self._publisher.publish(
            draining=self.draining, desired_revision=desired.revision if desired else None,
            desired_digest=desired.digest if desired else "", desired_error=self.desired.error, **sections,
        )

    def placement(self) -> list[Assignment]:
        """The whole cluster's placement as this node computes it now."""
        if self._runner is None:
            return []
        return self._runner.placement()

    def volume_plans(self) -> list[ReplicaPlan]:
        """Where every desired volume's replicas belong, as this node computes it now (a dead
        node's replicas are known from its last document)."""
        return self._volumes.plans() if self._volumes else []

    def desired_services(self) -> tuple[ServiceSpec, ...]:
        return self.desired.state.services if self.desired.state else ()

    def desired_state(self) -> DesiredState | None:
        return self.desired.state

    def volume_slots(self) -> Mapping[str, str]:
        return self._volumes.volume_slots() if self._volumes else {}

    async def attach_volumes(self, spec: InstanceSpec) -> InstanceSpec:
        if self._volumes is None:
            raise RuntimeError("the agent is not running")
        return await self._volumes.attach_volumes(spec)

    def settled(self) -> bool:
        return self._runner is not None and self._runner.settled

    def local_slots(self) -> set[str]:
        return self._runner.local_slots() if self._runner else set()

    async def publish_engines(self, records: tuple[EngineRecord, ...]) -> None:
        await self.publish(engines=records)

    def address_of(self, name: str) -> str | None:
        member = self.node.member(name)
        return member.addr[0] if member else None

    async def publish_instances(
        self, records: tuple[InstanceRecord, ...], health: tuple[HealthVerdict, ...], updates: tuple[UpdateMark, ...]
    ) -> None:
        await self.publish(instances=records, health=health, updates=updates)

    def rollouts(self) -> Mapping[str, Rollout]:
        return self._runner.rollouts if self._runner else {}

    async def resume_update(self, service: str) -> dict[str, Any]:
        if self._runner is None:
            raise RuntimeError("the agent is not running")
        return await self._runner.resume(service)

    def _volumes_desired(self) -> bool:
        """The replica server runs while volumes are desired, or replicas are kept here (orphans
        are shown and can be deleted)."""
        replicas = self.config.node.data_dir / "volumes" / "replicas"
        return bool(self.desired.state and self.desired.state.volumes) or any(replicas.glob("*.meta"))

    def engine_io(self) -> dict[str, dict[str, int]]:
        return self._volumes.engines.io() if self._volumes else {}

    async def publish_deletions(self, deletions: tuple[VolumeDeletion, ...]) -> None:
        await self.publish(deletions=deletions)

    async def delete_volume(self, volume: str) -> dict[str, Any]:
        if self._volumes is None:
            raise RuntimeError("the agent is not running")
        return await self._volumes.requests.delete(volume)

    async def salvage_volume(self, volume: str, trusted: str) -> dict[str, Any]:
        if self._volumes is None:
            raise RuntimeError("the agent is not running")
        return await self._volumes.requests.salvage(volume, trusted)

    async def _publish_replicas(self, records: tuple[ReplicaRecord, ...]) -> None:
        await self.publish(replicas=records)

    def _trigger(self) -> None:
        if self._runner is not None:
            self._runner.trigger()

    async def set_draining(self, draining: bool) -> None:
        if draining != self.draining:
            self.draining = draining
            self.events.append("node.draining" if draining else "node.undrained", node=self.name)
            await self.publish()
            self._trigger()

    async def _pump(self, stream: EventStream) -> None:
        async for event in stream:
            if isinstance(event, MemberEvent):
                m = event.member
                self.events.append(f"member.{event.kind.value}", node=m.name, addr=f"{m.addr[0]}:{m.addr[1]}",
                                   state=m.state.label, incarnation=m.incarnation)
                self._trigger()
            elif isinstance(event, AppStateEvent):
                self._receive_document(event)
            elif isinstance(event, UserEvent):
                self._receive_user_event(event)

    def _receive_user_event(self, event: UserEvent) -> None:
        try:
            payload: dict[str, Any] = {"payload": event.payload.decode()}
        except UnicodeDecodeError:
            payload = {"payload_base64": base64.b64encode(event.payload).decode()}
        self.events.append(f"user.{event.name}", origin=event.origin, stamp=event.ltime, **payload)

    async def send_event(self, name: str, payload: bytes) -> None:
        """A user event to every node, this one included (UserEventError when refused)."""
        try:
            await self.node.send_event(name, payload)
        except (BadEventName, PayloadTooLarge) as error:
            raise UserEventError(str(error)) from None

    def hook_stats(self) -> dict[str, dict[str, int]]:
        return self.hooks.stats()

    def _receive_document(self, event: AppStateEvent) -> None:
        document = self.documents.receive(event.node, event.data)
        if document is not None:
            self.events.append("document.updated", node=document.name, version=document.version)
            self._trigger()

    # Desired state ---------------------------------------------------------------------------------------

    async def _desired_changed(self) -> None:
        await self.publish()
        self._trigger()
