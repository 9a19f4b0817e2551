"""Hearth: the edge agent that turns a home box into a node of a peer-to-peer content network."""

from edge.errors import EdgeError

__version__ = "0.1.0"

__all__ = ["EdgeError", "__version__"]
