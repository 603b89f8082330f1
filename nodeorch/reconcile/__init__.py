"""Reconcilers: level-triggered, idempotent repair of what this node is responsible for."""
