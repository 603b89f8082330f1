"""Adapters to the outside world (containers, health probes, volumes), one Protocol per capability."""

__all__: list[str] = []
