"""The analytic classifier: exact incremental ridge regression on a seeded random projection."""

import numpy as np
import pytest
import torch

from edgecl.core import analytic
from edgecl.core.analytic import (
    PROJECTIONS,
    RIDGES,
    AnalyticClassifier,
    HadamardProjection,
    cholesky_factor,
    cholesky_update,
    hadamard,
    pack_upper,
    random_projection,
    unpack_upper,
)
from edgecl.core.methods import create_method, method_config, restore_method
from edgecl.errors import EdgeclError

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


def test_an_add_without_solving_updates_the_factor_and_q_alone():
    parts = sessions()
    solved, held = AnalyticClassifier(DIM, SIZE, seed=3), AnalyticClassifier(DIM, SIZE, seed=3)
    for head in (solved, held):
        head.add(*parts[0])
    before = held.weight.clone()
    solved.add(*parts[1])
    held.add(*parts[1], solve=False)  # the journal's replay, which holds the new W already
    assert torch.equal(held.weight, before)
    assert torch.equal(held.factor_packed, solved.factor_packed) and torch.equal(held.moment, solved.moment)
    torch.testing.assert_close(held.solve(), solved.weight)  # from the stored (float32) factor


@pytest.mark.parametrize("size,block", [(1, 4), (7, 3), (8, 4), (9, 512)])
def test_a_packed_triangle_unpacks_to_its_symmetric_matrix(size, block):
    a = torch.randn(size, size, dtype=torch.float64)
    symmetric = (a + a.T).float().double()  # what float32 storage can hold exactly
    packed = pack_upper(symmetric)
    assert packed.dtype == torch.float32 and len(packed) == size * (size + 1) // 2
    assert torch.equal(packed, symmetric[torch.ones(size, size, dtype=torch.bool).triu()].float())  # row by row
    assert torch.equal(unpack_upper(packed, size, block), symmetric)


@pytest.mark.parametrize("rows", [1, 7, 128, 129, 400])  # Q formed (at most 128 rows) or applied by ormqr
def test_a_cholesky_update_gives_the_factor_of_the_updated_system(rows):
    g = torch.Generator().manual_seed(rows)
    a = torch.randn(SIZE + 50, SIZE, generator=g, dtype=torch.float64)
    system = a.T @ a + torch.eye(SIZE, dtype=torch.float64)
    factor = torch.linalg.cholesky(system).mT.contiguous()
    new = torch.randn(rows, SIZE, generator=g, dtype=torch.float64)
    cholesky_update(factor, new)
    expected = torch.linalg.cholesky(system + new.T @ new).mT
    torch.testing.assert_close(factor, expected, rtol=0, atol=1e-10 * float(expected.abs().max()))
    assert torch.equal(factor, factor.triu()) and bool((factor.diagonal() > 0).all())


def test_a_system_that_is_not_positive_definite_is_a_clear_error():
    x, y, total = sessions()[0]
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    head.add(x, y, total)  # 90 samples: G has rank 90 of 300, so G - I is indefinite
    system = head.gram
    system.diagonal().sub_(1.0)
    with pytest.raises(EdgeclError, match="not positive definite.*larger ridge"):
        cholesky_factor(system)


def test_the_stored_state_rebuilds_the_same_statistics():
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    for x, y, total in parts[:2]:
        head.add(x, y, total)
    state = head.state_dict()
    assert set(state) == {"factor_packed", "moment", "weight", "ridge"}  # G's factor once, the projection regenerated
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=5)
    restored.load_state_dict(state)
    h = torch.cat([head.expand(x) for x, _, _ in parts[:2]]).double()
    torch.testing.assert_close(restored.gram, h.T @ h, rtol=1e-6, atol=1e-3)
    # the next session learned on the device after a reload gives the joint solution, and to the bit
    # what it gives without the reload
    x, y, total = parts[2]
    restored.add(x, y, total)
    head.add(x, y, total)
    expected = joint_solution(parts, SIZE, 3, float(restored.ridge))
    assert relative_error(restored.weight, expected) < 1e-4
    assert torch.equal(restored.weight, head.weight)


def test_the_kept_factor_loses_less_to_float32_than_keeping_g_would():
    """With a small lambda the float32 rounding of what is kept between sessions decides W's error."""
    parts, ridge = sessions(), 1e-2
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    kept = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    for x, y, total in parts:
        head.add(x, y, total, ridges=(ridge,))
        h = head.expand(x).double()
        gram = kept + h.T @ h  # as edgecl did before: G kept in float32 between sessions, W from the sum
        kept = unpack_upper(pack_upper(gram), SIZE)
    system = gram + ridge * torch.eye(SIZE, dtype=torch.float64)
    exact = joint_solution(parts, SIZE, 3, ridge)
    assert 2 * relative_error(head.weight, exact) < relative_error(torch.linalg.solve(system, head.moment), exact)


def legacy_state(head, gram):
    """The state as bundles wrote it before the factor was kept: G's upper triangle as gram_packed."""
    state = {**head.state_dict(), "gram_packed": pack_upper(gram)}
    del state["factor_packed"]
    return state


@pytest.mark.parametrize("ridges", [RIDGES, (1e-3,)], ids=["picked", "tiny"])
def test_a_state_that_kept_g_is_factored_when_a_session_is_added(ridges):
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    for x, y, total in parts[:2]:
        head.add(x, y, total, ridges=ridges)
    h = torch.cat([head.expand(x) for x, _, _ in parts[:2]]).double()
    ridge = float(head.ridge)
    kept = unpack_upper(pack_upper(h.T @ h), SIZE) + ridge * torch.eye(
        SIZE, dtype=torch.float64
    )  # G in float32, as kept
    assert bool(torch.linalg.eigvalsh(kept)[0] < 0) == (ridges != RIDGES)  # tiny: indefinite, Cholesky cannot factor it
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=5)
    restored.load_state_dict(legacy_state(head, h.T @ h))
    assert torch.equal(restored.weight, head.weight)  # classifying reads W as stored
    assert set(restored.state_dict()) == {"gram_packed", "moment", "weight", "ridge"}  # nothing factored yet
    restored.load_state_dict({"weight": head.weight}, strict=False)  # a partial load leaves G as it was
    assert "gram_packed" in restored.state_dict()
    exact = joint_solution(parts[:2], SIZE, 3, ridge)
    if ridges == RIDGES:
        assert relative_error(restored.solve(), exact) < 1e-4
    else:  # the nearest positive semi-definite G: no further from the ridge solution than LU on the kept G was
        assert relative_error(restored.solve(), exact) < relative_error(
            torch.linalg.solve(kept, restored.moment), exact
        )
    assert "factor_packed" in restored.state_dict()
    x, y, total = parts[2]
    restored.add(x, y, total)
    assert restored.learned and bool(torch.isfinite(restored.weight).all())
    if ridges == RIDGES:
        assert relative_error(restored.weight, joint_solution(parts, SIZE, 3, ridge)) < 1e-4


def test_a_state_that_kept_g_before_any_session_loads_as_empty():
    empty = AnalyticClassifier(DIM, SIZE, seed=3).state_dict()
    empty["gram_packed"] = empty.pop("factor_packed")
    fresh = AnalyticClassifier(DIM, SIZE, seed=3)
    fresh.load_state_dict(empty)
    assert not fresh.learned and not fresh.factor_packed.any() and "factor_packed" in fresh.state_dict()


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
    repicking = AnalyticClassifier(DIM, SIZE, seed=0, repick=True)
    repicking.add(*first, ridges=(1e-1, 1e1))
    assert repicking.add(*third, ridges=(1e3, 1e5)) in (1e3, 1e5)


def test_picking_lambda_every_session_keeps_g_and_gives_the_joint_solution_for_a_much_smaller_lambda():
    """The factor of G + lambda I in float32 fixes G only to about 1e-7 lambda: no base for a far smaller one."""
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3, repick=True)
    head.add(*parts[0], ridges=(1e6,))
    head.add(*parts[1], ridges=(1.0,))
    assert set(head.state_dict()) == {"gram_packed", "moment", "weight", "ridge"}
    assert relative_error(head.weight, joint_solution(parts[:2], SIZE, 3, 1.0)) < 1e-2
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=5, repick=True)
    restored.load_state_dict(head.state_dict())
    restored.add(*parts[2], ridges=(10.0,))
    head.add(*parts[2], ridges=(10.0,))
    assert torch.equal(restored.weight, head.weight)


def test_a_failed_add_changes_nothing_and_ridges_must_be_positive(monkeypatch):
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    head.add(*parts[0])
    before = {k: v.clone() for k, v in head.state_dict().items()}

    def fail(*_):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(analytic, "cholesky_update", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        head.add(*parts[1])
    with pytest.raises(EdgeclError, match="ridge candidates must be positive .got 0."):
        AnalyticClassifier(DIM, SIZE, seed=3).add(*parts[0], ridges=(0.0, 1.0))
    after = head.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_prediction_of_a_sample_does_not_depend_on_its_batch():
    head = AnalyticClassifier(DIM, SIZE, seed=1)
    for x, y, total in sessions():
        head.add(x, y, total)
    x = sessions(5)[0][0][:10]
    alone = torch.cat([head(x[i : i + 1]) for i in range(10)])
    torch.testing.assert_close(head(x), alone, rtol=0, atol=1e-5)
