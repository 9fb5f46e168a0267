"""The analytic classifier: exact incremental ridge regression on a seeded random projection."""

import numpy as np
import pytest
import torch

from edgecl.analytic import PROJECTIONS, AnalyticClassifier, HadamardProjection, hadamard, pack_upper, random_projection, unpack_upper
from edgecl.errors import EdgeclError
from edgecl.methods import create_method, method_config, restore_method

DIM, SIZE = 24, 300


def sessions(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(7, DIM, generator=g) * 2
    parts = []
    for lo, hi in ((0, 3), (3, 5), (5, 7)):
        y = torch.arange(lo, hi).repeat_interleave(30)
        parts.append((centres[y] + torch.randn(len(y), DIM, generator=g), y, hi))
    return parts


def joint_solution(parts, size, seed, ridge, kind="hadamard"):
    h = torch.cat([torch.relu(random_projection(kind, DIM, size, seed)(x)) for x, _, _ in parts]).double()
    y = torch.nn.functional.one_hot(torch.cat([t for _, t, _ in parts]), parts[-1][2]).double()
    return torch.linalg.solve(h.T @ h + ridge * torch.eye(size, dtype=torch.float64), h.T @ y)


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_sessions_one_by_one_give_the_joint_ridge_solution(kind):
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3, kind=kind)
    for x, y, total in parts:
        head.add(x, y, total)
    assert head.num_classes == 7
    expected = joint_solution(parts, SIZE, 3, float(head.ridge), kind)
    assert relative_error(head.weight, expected) < 1e-4


@pytest.mark.parametrize("size,block", [(1, 4), (7, 3), (8, 4), (9, 512)])
def test_a_packed_triangle_unpacks_to_its_symmetric_matrix(size, block):
    a = torch.randn(size, size, dtype=torch.float64)
    symmetric = (a + a.T).float().double()  # what float32 storage can hold exactly
    packed = pack_upper(symmetric)
    assert packed.dtype == torch.float32 and len(packed) == size * (size + 1) // 2
    assert torch.equal(packed, symmetric[torch.ones(size, size, dtype=torch.bool).triu()].float())  # row by row
    assert torch.equal(unpack_upper(packed, size, block), symmetric)


def test_a_system_cholesky_cannot_factor_is_solved_by_lu_on_g_formed_again():
    x, y, total = sessions()[0]
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    head.add(x, y, total)  # 90 samples: G has rank 90 of 300, so lambda = -1 leaves it indefinite
    gram = head.gram.clone()
    expected = torch.linalg.solve(gram - torch.eye(SIZE, dtype=torch.float64), head.moment).float()
    torch.testing.assert_close(head.solve(-1.0), expected)
    assert torch.equal(head.gram, gram)  # solved on a copy
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=total)
    restored.load_state_dict(head.state_dict())
    spent = unpack_upper(restored.gram_packed, SIZE)
    torch.testing.assert_close(restored.solve(-1.0, spent), expected)  # G itself overwritten by the failed factorization


def test_the_stored_state_rebuilds_the_same_statistics():
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    for x, y, total in parts[:2]:
        head.add(x, y, total)
    state = head.state_dict()
    assert "gram" not in state and "projection" not in state  # regenerated / unpacked, not stored twice
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=5)
    restored.load_state_dict(state)
    h = torch.cat([head.expand(x) for x, _, _ in parts[:2]]).double()
    torch.testing.assert_close(restored.gram, h.T @ h, rtol=1e-6, atol=1e-3)
    assert torch.equal(restored.gram, restored.gram.T)
    # the next session learned on the device after a reload gives the joint solution, and to the bit
    # what it gives without the reload
    x, y, total = parts[2]
    restored.add(x, y, total)
    head.add(x, y, total)
    expected = joint_solution(parts, SIZE, 3, float(restored.ridge))
    assert relative_error(restored.weight, expected) < 1e-4
    assert torch.equal(restored.weight, head.weight)


def dense(projection, dim):
    return projection(torch.eye(dim))


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_the_projection_is_regenerated_from_its_seed_as_a_standard_normal_matrix(kind):
    first, again, other = (dense(PROJECTIONS[kind](DIM, SIZE, seed), DIM) for seed in (7, 7, 8))
    assert first.shape == (DIM, SIZE)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(float(first.mean())) < 0.05 and abs(float(first.std()) - 1) < 0.05


def test_the_hadamard_projection_is_linear_and_matches_a_gaussian_matrix_in_shape_and_scale():
    dim, size = 1280, 4096  # EfficientNet-Lite0's width: padded to 2048, two blocks
    projection = HadamardProjection(dim, size, 0)
    matrix = dense(projection, dim)
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(projection(x), x @ matrix, rtol=0, atol=1e-3)
    # column lengths as a Gaussian matrix's (about sqrt(D)), not those of the padded width d
    assert abs(float(matrix.norm(dim=0).mean()) - dim**0.5) < 0.5
    # the blocks are independent: the second is not the first again
    assert float(torch.nn.functional.cosine_similarity(matrix[:, :2048], matrix[:, 2048:], dim=0).abs().mean()) < 0.05


def test_the_transform_is_the_walsh_hadamard_matrix():
    projection = HadamardProjection(40, 64, 0)  # d = 64 = 8 x 8
    z = torch.randn(3, 1, 64)
    torch.testing.assert_close(projection._transform(z), z @ hadamard(64).T, rtol=0, atol=1e-4)
    h = hadamard(16)
    torch.testing.assert_close(h @ h.T, 16 * torch.eye(16))


def test_configs_stored_before_projection_kind_keep_the_gaussian_matrix():
    assert method_config("safe").projection_kind == "hadamard"
    stored = method_config("safe").to_dict()
    del stored["projection_kind"]
    assert method_config("safe", stored).projection_kind == "gaussian"
    edgecl = method_config("edgecl").to_dict()
    del edgecl["safe"]["projection_kind"]
    assert method_config("edgecl", edgecl).safe.projection_kind == "gaussian"
    inflora = method_config("inflora").to_dict()
    del inflora["projection_kind"]
    assert create_method("inflora", DIM, inflora).analytic.kind == "gaussian"
    # such a bundle's heads, restored, predict what they predicted when they were saved
    old = create_method("safe", DIM, projection=64, projection_kind="gaussian")
    x, y, _ = sessions()[0]
    old.learn(x, y, torch.Generator().manual_seed(0), show_progress=False)
    saved = {k: v for k, v in old.config.to_dict().items() if k != "projection_kind"}
    restored = restore_method("safe", DIM, saved, old.structure(), old.state_dict())
    torch.testing.assert_close(restored.predict(x), old.predict(x))
    assert not torch.allclose(create_method("safe", DIM, projection=64).slow_head.expand(x), old.slow_head.expand(x))
    with pytest.raises(EdgeclError, match="projection_kind=dense: unknown projection .known: hadamard, gaussian"):
        method_config("safe", settings={"projection_kind": "dense"})


def test_ridge_is_picked_on_held_out_samples():
    """Few samples, many dimensions: a tiny ridge interpolates noise, so the held-out pick is larger."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, DIM, generator=g)
    y = torch.randint(0, 2, (40,), generator=g)
    head = AnalyticClassifier(DIM, SIZE, seed=0)
    chosen = head.add(x, y, 2, ridges=(1e-6, 1e2, 1e4))
    assert chosen in (1e2, 1e4)
    assert np.isfinite(head.weight.numpy()).all()


@pytest.mark.parametrize("earlier", [True, False], ids=["after-a-session", "first-session"])
def test_cross_validation_errors_equal_refits_without_each_fold(earlier):
    """After a session through G's eigenvectors; in a first session of fewer samples than M through
    the samples' kernel."""
    first, second, _ = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=0)
    if earlier:
        head.add(*first)  # always in the fit
    x, y, total = second
    h = head.expand(x).double()
    onehot = torch.nn.functional.one_hot(y, total).double()
    head.moment = torch.cat([head.moment, torch.zeros(SIZE, total - head.num_classes, dtype=torch.float64)], dim=1)
    ridges, folds, limit = (1e-1, 1e1, 1e3), 3, len(h) - 5  # the last 5 samples are never held out
    expected = []
    for ridge in ridges:
        error = 0.0
        for f in range(folds):
            held = (torch.arange(len(h)) % folds == f) & (torch.arange(len(h)) < limit)
            fit = ~held
            gram = head.gram + h[fit].T @ h[fit] + ridge * torch.eye(SIZE, dtype=torch.float64)
            weight = torch.linalg.solve(gram, head.moment + h[fit].T @ onehot[fit])
            error += float(((h[held] @ weight - onehot[held]) ** 2).sum())
        expected.append(error)
    np.testing.assert_allclose(head.cross_validation_errors(h, onehot, ridges, folds, limit), expected, rtol=1e-6)


def test_the_first_sessions_ridge_is_kept_unless_repicked():
    first, second, third = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=0)
    picked = head.add(*first, ridges=(1e-1, 1e1))
    assert head.add(*second, ridges=(1e3, 1e5)) == picked  # the later candidates are not even looked at
    assert head.add(*third, ridges=(1e3, 1e5), repick=True) in (1e3, 1e5)


def test_prediction_of_a_sample_does_not_depend_on_its_batch():
    head = AnalyticClassifier(DIM, SIZE, seed=1)
    for x, y, total in sessions():
        head.add(x, y, total)
    x = sessions(5)[0][0][:10]
    alone = torch.cat([head(x[i : i + 1]) for i in range(10)])
    torch.testing.assert_close(head(x), alone, rtol=0, atol=1e-5)
