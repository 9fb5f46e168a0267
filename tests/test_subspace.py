"""The DualGPM memory: what it keeps, and that designed directions stay out of it."""

import torch

from edgecl.subspace import A_SCALE, REMOVE, RETAIN, SubspaceMemory


def covariance(basis: torch.Tensor, count: int = 2000, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """E[x x^T] of inputs that lie in the span of `basis` (D x k), plus a little isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, basis.shape[1], generator=g, dtype=torch.float64) @ basis.T
    x += noise * torch.randn(count, basis.shape[0], generator=g, dtype=torch.float64)
    return x.T @ x / count


def orthonormal(dim: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))[0]


def test_memory_keeps_the_old_subspace_and_new_directions_avoid_it():
    dim = 40
    old = orthonormal(dim, 6, seed=1)
    memory = SubspaceMemory()
    memory.update("layer", covariance(old), threshold=0.95)
    kept = memory.bases["layer"]
    assert memory.modes["layer"] == REMOVE and 1 <= kept.shape[1] <= 8
    assert torch.linalg.matrix_norm(old - kept @ (kept.T @ old)) < 0.35  # the old inputs lie in the memory
    shared = orthonormal(dim, 10, seed=2)  # the next session's inputs overlap the old ones
    down = memory.design("layer", covariance(shared, seed=3), rank=5).double()
    assert down.shape == (5, dim)
    torch.testing.assert_close(down.norm(dim=1), torch.full((5,), A_SCALE, dtype=torch.float64))
    assert (down @ kept).abs().max() < 1e-6  # A's rows are orthogonal to the memory
    plain = SubspaceMemory().design("layer", covariance(shared, seed=3), rank=5).double()
    assert (plain @ kept).abs().max() > 0.05  # without a memory they are not


def test_memory_switches_to_the_free_space_and_never_designs_inside_the_memory():
    dim = 12
    memory = SubspaceMemory()
    memory.update("small", covariance(torch.eye(dim, dtype=torch.float64)), threshold=0.7)  # isotropic: most dims
    assert memory.modes["small"] == RETAIN
    free = memory.bases["small"]
    assert 0 < free.shape[1] < dim / 2 and memory.occupied("small", dim) == dim - free.shape[1]
    down = memory.design("small", covariance(torch.eye(dim, dtype=torch.float64), seed=4), rank=10).double()
    used = down[down.norm(dim=1) > 0]
    assert len(used) == free.shape[1]  # only as many directions as are free, not an arbitrary completion
    assert torch.linalg.matrix_norm(used - (used @ free) @ free.T) < 1e-6  # all of them in the free space
    memory.update("small", covariance(torch.eye(dim, dtype=torch.float64), seed=5), threshold=1.0)
    assert memory.modes["small"] == RETAIN and memory.bases["small"].shape[1] == 0  # full, never past full
    assert memory.occupied("small", dim) == dim and not memory.design("small", torch.eye(dim), rank=4).any()


def test_a_later_session_adds_directions_and_the_state_round_trips():
    dim = 30
    memory = SubspaceMemory()
    memory.update("l", covariance(orthonormal(dim, 3, seed=5)), threshold=0.97)
    before = memory.occupied("l", dim)
    memory.update("l", covariance(orthonormal(dim, 3, seed=6)), threshold=0.97)
    assert memory.occupied("l", dim) > before
    basis = memory.bases["l"]
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-6, rtol=0)
    restored = SubspaceMemory.from_state_dict(memory.state_dict())
    assert restored.modes == memory.modes
    torch.testing.assert_close(restored.bases["l"], basis, atol=1e-6, rtol=0)
