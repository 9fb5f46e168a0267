"""Continual-learning methods behind one interface; importing this package registers them all."""

from edgecl.methods.base import (
    METHODS,
    ContinualMethod,
    MethodConfig,
    create_method,
    method_class,
    register_method,
    restore_method,
)
from edgecl.methods import simplecil, tosca  # noqa: F401  (registration)

__all__ = [
    "METHODS",
    "ContinualMethod",
    "MethodConfig",
    "create_method",
    "method_class",
    "register_method",
    "restore_method",
]
