"""nodeorch: the masterless node orchestrator daemon (built on the gossip package)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
