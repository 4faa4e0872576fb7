"""The control plane: Lambda's REST API for event source mappings, health, metrics, status."""

from ._app import MAX_BODY_BYTES, ControlServer, create_app

__all__ = ("MAX_BODY_BYTES", "ControlServer", "create_app")
