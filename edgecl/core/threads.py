"""How many threads PyTorch's CPU ops use for a block of work.

Many small ops lose to a thread pool: each op's parallel region costs more than it saves, and on a
CPU shared with other work (a camera pipeline, another model) every region waits for whichever of
its threads the scheduler has just put aside."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on `count` PyTorch threads, then give back the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
