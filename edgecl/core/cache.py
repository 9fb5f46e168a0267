"""edgecl's cache folder, and results stored in it under a key made of what computed them.

Host and evaluation runs cache exported backbones, embeddings, slow-learner tunings and InfLoRA
sessions; the device caches onnxruntime's TensorRT engines. A result is found again only when
everything that made it is the same (the key), and is written aside and renamed, so a crash or a
concurrent run never leaves half a file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgecl.core.files import written_aside
from edgecl.core.preprocess import PreprocessConfig

Tensors = dict[str, torch.Tensor]


def cache_root(override: Path | None = None) -> Path:
    """`override`, else $EDGECL_CACHE, else ~/.cache/edgecl; embeddings/ and onnx/ live below it."""
    return Path(override or os.environ.get("EDGECL_CACHE") or Path.home() / ".cache" / "edgecl")


def identity_key(identity: dict) -> str:
    """The cache file name of a JSON-able description of what was computed."""
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def cache_key(paths: Sequence[Path], backbone_sha256: str, preprocess: PreprocessConfig) -> str:
    """Changes when the backbone, the preprocessing, or any file (path, size, mtime) changes."""
    files = []
    for path in paths:
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return identity_key({"backbone": backbone_sha256, "preprocess": preprocess.to_dict(), "files": files})


def save_tensors(file: Path, tensors: Tensors, metadata: dict[str, str]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with written_aside(file, durable=False) as tmp:  # a cache: a lost file is computed again
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(file: Path) -> tuple[Tensors, dict[str, str]]:
    with safe_open(str(file), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def cached_result(
    cache_dir: Path, identity: dict, compute: Callable[[], tuple[Tensors, dict]]
) -> tuple[Tensors, dict, bool]:
    """compute()'s (tensors, stats), kept under the key of `identity`: a later call with the same
    identity reads them back instead. Returns (tensors, stats, whether they came from the cache)."""
    file = Path(cache_dir) / f"{identity_key(identity)}.safetensors"
    if file.is_file():
        tensors, metadata = load_tensors(file)
        return tensors, {**json.loads(metadata["stats"]), "cached": True}, True
    tensors, stats = compute()
    save_tensors(file, tensors, {"stats": json.dumps(stats)})
    return tensors, stats, False
