"""Embeddings of a list of images, cached on disk by backbone, preprocessing and file identity."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgecl.core.embedding import CPU_BATCH_SIZE, EmbedBatch, Embeddings, embed_paths
from edgecl.core.preprocess import PreprocessConfig


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


def _save_atomic(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Written aside and renamed, so a crash or a concurrent run never leaves half a cache file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, file)


def cached_embeddings(
    paths: Sequence[Path],
    embed: EmbedBatch,
    preprocess: PreprocessConfig,
    backbone_sha256: str,
    cache_dir: Path,
    *,
    description: str = "embedding",
    batch_size: int = CPU_BATCH_SIZE,
    show_progress: bool = True,
) -> tuple[Embeddings, bool]:
    """(embeddings, whether they came from the cache)."""
    file = Path(cache_dir) / f"{cache_key(paths, backbone_sha256, preprocess)}.safetensors"
    if file.is_file():
        with safe_open(str(file), framework="pt") as cached:
            skipped = json.loads((cached.metadata() or {}).get("skipped", "[]"))
            return Embeddings(cached.get_tensor("features"), cached.get_tensor("kept").tolist(), skipped), True
    result = embed_paths(paths, embed, preprocess, batch_size=batch_size, description=description, show_progress=show_progress)
    _save_atomic(file, {"features": result.features, "kept": torch.tensor(result.kept, dtype=torch.int64)}, {"skipped": json.dumps(result.skipped)})
    return result, False


def write_tensors_with_stats(file: Path, tensors: dict[str, torch.Tensor], stats: dict) -> None:
    """A cached training result: its tensors, and its stats as JSON metadata."""
    _save_atomic(file, tensors, {"stats": json.dumps(stats)})


def read_tensors_with_stats(file: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(file), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, json.loads((handle.metadata() or {})["stats"])
