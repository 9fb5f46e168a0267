"""Continual-learning methods behind one interface; importing this package registers them all."""

from edgecl.core.methods import edgecl, inflora, safe, simplecil, tosca  # noqa: F401  (registration)
from edgecl.core.methods.interface import (
    METHODS,
    ContinualMethod,
    MethodConfig,
    create_method,
    method_class,
    method_config,
    register_method,
    restore_method,
)

__all__ = [
    "METHODS",
    "ContinualMethod",
    "MethodConfig",
    "create_method",
    "method_class",
    "method_config",
    "register_method",
    "restore_method",
]
