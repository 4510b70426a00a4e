"""The simulated engine (`backend: sim`); see backend.py."""

from services.engine.backends.sim.backend import SimBackend

__all__ = ["SimBackend"]
