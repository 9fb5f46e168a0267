"""The DualGPM memory: what it keeps, and that designed directions stay out of it."""

import torch

from edgecl.host.subspace import A_SCALE, REMOVE, RETAIN, SubspaceMemory, contrast_design


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
    memory = SubspaceMemory(design="contrast")
    memory.update("l", covariance(orthonormal(dim, 3, seed=5)), threshold=0.97)
    before = memory.occupied("l", dim)
    memory.update("l", covariance(orthonormal(dim, 3, seed=6)), threshold=0.97)
    assert memory.occupied("l", dim) > before
    basis = memory.bases["l"]
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-6, rtol=0)
    restored = SubspaceMemory(design="contrast").load_state_dict(memory.state_dict())
    assert restored.modes == memory.modes and restored.sessions == {"l": 2} and restored.design_rule is contrast_design
    torch.testing.assert_close(restored.bases["l"], basis, atol=1e-6, rtol=0)
    torch.testing.assert_close(restored.old["l"], memory.old["l"], atol=1e-6, rtol=0)
    square = SubspaceMemory(design="contrast").load_state_dict(
        {**memory.state_dict(), "l.old": memory.old["l"].float()}
    )  # as first saved
    torch.testing.assert_close(square.old["l"], memory.old["l"], atol=1e-6, rtol=0)
    legacy = {
        k: v for k, v in memory.state_dict().items() if not k.endswith((".old", ".sessions"))
    }  # saved before edgecl kept them
    official = SubspaceMemory(design="projected")
    official.update("l", covariance(orthonormal(dim, 3, seed=5)), threshold=0.97)
    assert set(official.state_dict()) == {"l.basis", "l.retain"}  # the official rule needs no old covariance
    older = SubspaceMemory(design="contrast").load_state_dict(legacy)
    new = covariance(orthonormal(dim, 4, seed=7), seed=8)
    torch.testing.assert_close(
        older.design("l", new, rank=3), SubspaceMemory().load_state_dict(legacy).design("l", new, rank=3)
    )
    older.update("l", new, threshold=0.97)
    assert "l" not in older.old  # one session's covariance would pass for all the old ones


def test_contrast_design_avoids_the_old_inputs_energy_left_outside_the_memory():
    """Old inputs: a strong 3-d part the memory takes at 0.75, and a weaker 3-d tail it leaves free; the
    new inputs share the tail and bring two directions of their own. The official rule spends its
    directions on the shared tail (most new energy); contrast takes the new directions and stops."""
    dim = 30
    axes = torch.eye(dim, dtype=torch.float64)
    strong, tail, own = axes[:, :3], axes[:, 3:6], axes[:, 6:8]
    old = covariance(torch.cat([strong, 0.5 * tail], dim=1), noise=0.0)
    new = covariance(torch.cat([3 * tail, own], dim=1), noise=0.001, seed=1)
    official, contrast = SubspaceMemory(design="projected"), SubspaceMemory(design="contrast", max_leak=0.01)
    for memory in (official, contrast):
        memory.update("l", old, threshold=0.75)
        assert memory.occupied("l", dim) == 3  # the same memory: the tail is free for both
    leak = lambda down: float(torch.trace(down.double() @ old @ down.double().T))  # noqa: E731 (old energy through A)
    projected, designed = official.design("l", new, rank=4), contrast.design("l", new, rank=4)
    assert int(designed.any(dim=1).sum()) == 2 and int(projected.any(dim=1).sum()) == 4
    used = designed[designed.any(dim=1)].double()
    assert torch.linalg.matrix_norm(used - (used @ own) @ own.T) < 1e-3  # the new inputs' own directions
    assert leak(designed) < 1e-3 * leak(projected)
    torch.testing.assert_close(used.norm(dim=1), torch.full((2,), A_SCALE, dtype=torch.float64))


def test_contrast_keeps_the_mean_old_covariance_and_designs_inside_a_retained_free_space():
    dim = 12
    first, second = covariance(torch.eye(dim, dtype=torch.float64)), covariance(orthonormal(dim, 4, seed=9), seed=10)
    memory = SubspaceMemory(design="contrast", max_leak=0.5)
    memory.update("small", first, threshold=0.7)  # isotropic: most dims, so the memory keeps the free space
    memory.update("small", second, threshold=0.7)
    torch.testing.assert_close(memory.old["small"], (first + second) / 2)
    assert memory.modes["small"] == RETAIN
    free = memory.bases["small"]  # in retain mode the stored basis is the free space
    assert free.shape[1] == dim - memory.occupied("small", dim) > 0
    torch.testing.assert_close(memory.free_basis("small", dim), free)
    down = memory.design("small", covariance(torch.eye(dim, dtype=torch.float64), seed=11), rank=10).double()
    used = down[down.any(dim=1)]
    assert 0 < len(used) <= free.shape[1]
    assert torch.linalg.matrix_norm(used - (used @ free) @ free.T) < 1e-6  # inside the free space
