"""Health probes: http, tcp and exec, one Protocol."""

from drivers.health.probes import ExecProbe, HttpProbe, Probe, ProbeResult, TcpProbe

__all__ = ["ExecProbe", "HttpProbe", "Probe", "ProbeResult", "TcpProbe"]
