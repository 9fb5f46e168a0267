"""Parameter-efficient tuning inside the backbone, one module per method, behind one interface.

A tuner attaches trainable modules to a frozen timm model (`attach` returns their parameters),
and afterwards `merge`s them: exactly into the weights where it can (the merged model is a plain
timm model with the original parameter count), or leaves them in the graph, described by
`structure()` so that a bundle can rebuild them (`rebuild`).
"""

from edgecl.errors import EdgeclError
from edgecl.host.tuners.adaptformer import AdaptFormer
from edgecl.host.tuners.base import Tuner
from edgecl.host.tuners.lora import LoRA
from edgecl.host.tuners.ssf import SSF

TUNERS: dict[str, type[Tuner]] = {t.name: t for t in (SSF, AdaptFormer, LoRA)}


def create_tuner(name: str, **settings) -> Tuner:
    if name not in TUNERS:
        raise EdgeclError(f"unknown tuner {name!r} (known: {', '.join(TUNERS)})")
    return TUNERS[name](**settings)


def rebuild(model, structure: dict | None):
    """Re-attach tuners that stayed in the graph (their weights are in the bundle's backbone file)."""
    if structure:
        create_tuner(structure["name"], **structure.get("settings", {})).attach(model)
        model.eval().requires_grad_(False)  # the new modules start in training mode (dropout on)
    return model
