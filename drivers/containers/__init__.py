"""Running service instances: one Protocol, implemented by supervised local processes, by the
Docker engine, and in memory for unit tests of the reconcilers."""

from drivers.containers._types import (
    ContainerDriver,
    DriverError,
    InstanceSpec,
    InstanceState,
    InstanceStatus,
    VolumeBinding,
    logical_slot,
    successor_slot,
)

__all__ = ["ContainerDriver", "DriverError", "InstanceSpec", "InstanceState", "InstanceStatus", "VolumeBinding",
           "logical_slot", "successor_slot"]
