"""Images -> embeddings in batches, decoding ahead of the backbone, skipping unreadable files."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edgecl.core.images import UnreadableImage, load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.core.progress import progress_bar

EmbedBatch = Callable[[np.ndarray], torch.Tensor]
# On CPUs small batches are fastest per image (activations stay in cache): benchmarks/embedding.py.
CPU_BATCH_SIZE = 2


@dataclass
class Embeddings:
    features: torch.Tensor  # (kept, D) float32
    kept: list[int]  # indices into the paths given, in order
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def _load(path: Path, config: PreprocessConfig) -> np.ndarray | str:
    try:
        return preprocess(load_image(path), config)
    except UnreadableImage as err:
        return str(err)


def embed_paths(
    paths: Sequence[Path],
    embed_batch: EmbedBatch,
    config: PreprocessConfig,
    *,
    batch_size: int = CPU_BATCH_SIZE,
    description: str = "embedding",
    show_progress: bool = True,
) -> Embeddings:
    chunks = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    features: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool, progress_bar(
        description, len(paths), enabled=show_progress, unit="images"
    ) as advance:

        def submit(chunk: list[int]) -> list[Future]:
            return [pool.submit(_load, paths[i], config) for i in chunk]

        pending = submit(chunks[0]) if chunks else []
        for n, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            pending = submit(chunks[n + 1]) if n + 1 < len(chunks) else []
            arrays = []
            for index, item in zip(chunk, loaded):
                if isinstance(item, str):
                    skipped.append(item)
                else:
                    arrays.append(item)
                    kept.append(index)
            if arrays:
                features.append(embed_batch(np.stack(arrays)).float().cpu())
            advance(len(chunk))
    dim = features[0].shape[1] if features else 0
    return Embeddings(torch.cat(features) if features else torch.zeros(0, dim), kept, skipped)
