"""Images -> embeddings in batches, decoding ahead of the backbone, skipping unreadable files."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from edgecl.core.images import ImageLike, UnreadableImage, describe, to_rgb
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.core.progress import progress_bar

EmbedBatch = Callable[[np.ndarray], torch.Tensor]
# On CPUs small batches are fastest per image, activations staying in cache (batch 1 against 32: docs/benchmarks.md).
CPU_BATCH_SIZE = 2


@dataclass
class Embeddings:
    features: torch.Tensor  # (kept, D) float32
    kept: list[int]  # indices into the images given, in order
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def _load(image: ImageLike, index: int, config: PreprocessConfig) -> np.ndarray | str:
    try:
        return preprocess(to_rgb(image), config)
    except UnreadableImage as err:
        return str(err)
    except MemoryError:
        return f"{describe(image, index)}: too large to decode in the memory left"


@dataclass
class Chunk:
    """One batch's outcome: the indices of the images that were embedded, their embeddings, and the rest."""

    kept: list[int]
    features: torch.Tensor | None  # (len(kept), D), None when nothing in the batch could be read
    skipped: list[tuple[int, str]]  # (index, "path: reason")


def iter_embedded(
    images: Sequence[ImageLike], embed_batch: EmbedBatch, config: PreprocessConfig, *, batch_size: int = CPU_BATCH_SIZE
) -> Iterator[Chunk]:
    """The images in batches, in order, one Chunk at a time: a caller that streams its results holds
    one batch, whatever the number of images. The next batch decodes while this one runs the backbone."""
    chunks = [list(range(i, min(i + batch_size, len(images)))) for i in range(0, len(images), batch_size)]
    if len(chunks) == 1:  # one frame (a camera node's call): no thread to start, decoded right here
        loaded = [_load(images[i], i, config) for i in chunks[0]]
        yield _embedded(chunks[0], loaded, embed_batch)
        return
    with ThreadPoolExecutor(max_workers=2) as pool:

        def submit(chunk: list[int]) -> list[Future]:
            return [pool.submit(_load, images[i], i, config) for i in chunk]

        pending = submit(chunks[0]) if chunks else []
        for n, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            pending = submit(chunks[n + 1]) if n + 1 < len(chunks) else []
            yield _embedded(chunk, loaded, embed_batch)


def _embedded(chunk: list[int], loaded: list[np.ndarray | str], embed_batch: EmbedBatch) -> Chunk:
    kept = [i for i, item in zip(chunk, loaded) if not isinstance(item, str)]
    arrays = [item for item in loaded if not isinstance(item, str)]
    features = embed_batch(np.stack(arrays)).float().cpu() if arrays else None
    return Chunk(kept, features, [(i, item) for i, item in zip(chunk, loaded) if isinstance(item, str)])


def embed_images(
    images: Sequence[ImageLike],
    embed_batch: EmbedBatch,
    config: PreprocessConfig,
    *,
    batch_size: int = CPU_BATCH_SIZE,
    description: str = "embedding",
    show_progress: bool = True,
) -> Embeddings:
    """Every image's embedding at once (the images of a session); unreadable ones skipped and named."""
    features: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[str] = []
    with progress_bar(description, len(images), enabled=show_progress, unit="images") as advance:
        for chunk in iter_embedded(images, embed_batch, config, batch_size=batch_size):
            kept += chunk.kept
            skipped += [reason for _, reason in chunk.skipped]
            if chunk.features is not None:
                features.append(chunk.features)
            advance(len(chunk.kept) + len(chunk.skipped))
    dim = features[0].shape[1] if features else 0
    return Embeddings(torch.cat(features) if features else torch.zeros(0, dim), kept, skipped)
