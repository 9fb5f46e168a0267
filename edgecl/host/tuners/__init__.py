"""Parameter-efficient tuning inside the backbone, one module per method, behind one interface.

A tuner attaches trainable modules to a frozen timm model (`attach` returns their parameters),
and afterwards `merge`s them: exactly into the weights where it can (the merged model is a plain
timm model with the original parameter count), or leaves them in the graph, described by
`structure()` so that a bundle can rebuild them (`rebuild`).
"""

from edgecl.core.methods.safe import AUTO_TUNER
from edgecl.errors import EdgeclError
from edgecl.host.tuners.adaptformer import AdaptFormer
from edgecl.host.tuners.lora import LoRA
from edgecl.host.tuners.ssf import SSF
from edgecl.host.tuners.tuner import Tuner

TUNERS: dict[str, type[Tuner]] = {t.name: t for t in (SSF, AdaptFormer, LoRA)}


def tuner_for(name: str, model) -> str:
    """`name`, or for `auto` the backbone's kind of tuner: AdaptFormer on a ViT (blocks with an MLP: SAFE's
    choice), SSF on a CNN (AdaptFormer cannot attach there)."""
    if name != AUTO_TUNER:
        return name
    return AdaptFormer.name if AdaptFormer.fits(model) else SSF.name


def create_tuner(name: str, **settings) -> Tuner:
    if name not in TUNERS:
        raise EdgeclError(f"unknown tuner {name!r} (known: {', '.join(TUNERS)})")
    return TUNERS[name](**settings)


# the tuners that stay in the graph, and the settings a bundle may give them (numbers only)
KEPT_IN_GRAPH = {"adaptformer": ("bottleneck", "scale", "dropout")}


def rebuild(model, structure: dict | None):
    """Re-attach tuners that stayed in the graph (their weights are in the bundle's backbone file)."""
    if structure:
        name = structure.get("name") if isinstance(structure, dict) else None
        settings = structure.get("settings", {}) if isinstance(structure, dict) else None
        if (
            name not in KEPT_IN_GRAPH
            or not isinstance(settings, dict)
            or not set(settings) <= set(KEPT_IN_GRAPH[name])
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 << 14 for v in settings.values()
            )
        ):
            raise EdgeclError(
                f"the bundle's backbone.tuner {structure!r:.100} is not a tuner edgecl keeps in the graph; "
                "the bundle is damaged"
            )
        create_tuner(name, **settings).attach(model)
        model.eval().requires_grad_(False)  # the new modules start in training mode (dropout on)
    return model
