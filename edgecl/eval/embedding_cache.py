"""Embeddings of a list of images, cached by backbone, preprocessing and file identity, so repeated
evaluations skip the backbone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from edgecl.core.cache import cache_key, load_tensors, save_tensors
from edgecl.core.embedding import CPU_BATCH_SIZE, EmbedBatch, Embeddings, embed_images
from edgecl.core.preprocess import PreprocessConfig


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
        tensors, metadata = load_tensors(file)
        return Embeddings(
            tensors["features"], tensors["kept"].tolist(), json.loads(metadata.get("skipped", "[]"))
        ), True
    result = embed_images(
        paths, embed, preprocess, batch_size=batch_size, description=description, show_progress=show_progress
    )
    save_tensors(
        file,
        {"features": result.features, "kept": torch.tensor(result.kept, dtype=torch.int64)},
        {"skipped": json.dumps(result.skipped)},
    )
    return result, False
