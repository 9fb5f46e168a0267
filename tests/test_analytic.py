"""The analytic classifier: exact incremental ridge regression on a seeded random projection."""

import numpy as np
import torch

from edgecl.analytic import AnalyticClassifier, random_projection

DIM, SIZE = 24, 300


def sessions(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(7, DIM, generator=g) * 2
    parts = []
    for lo, hi in ((0, 3), (3, 5), (5, 7)):
        y = torch.arange(lo, hi).repeat_interleave(30)
        parts.append((centres[y] + torch.randn(len(y), DIM, generator=g), y, hi))
    return parts


def joint_solution(parts, size, seed, ridge):
    h = torch.cat([torch.relu(x @ random_projection(DIM, size, seed)) for x, _, _ in parts]).double()
    y = torch.nn.functional.one_hot(torch.cat([t for _, t, _ in parts]), parts[-1][2]).double()
    return torch.linalg.solve(h.T @ h + ridge * torch.eye(size, dtype=torch.float64), h.T @ y)


def relative_error(a, b):
    return float((a.double() - b).norm() / b.norm())


def test_sessions_one_by_one_give_the_joint_ridge_solution():
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    for x, y, total in parts:
        head.add(x, y, total)
    assert head.num_classes == 7
    expected = joint_solution(parts, SIZE, 3, float(head.ridge))
    assert relative_error(head.weight, expected) < 1e-4


def test_the_stored_state_rebuilds_the_same_statistics():
    parts = sessions()
    head = AnalyticClassifier(DIM, SIZE, seed=3)
    for x, y, total in parts[:2]:
        head.add(x, y, total)
    state = head.state_dict()
    assert "gram" not in state and "projection" not in state  # regenerated / unpacked, not stored twice
    restored = AnalyticClassifier(DIM, SIZE, seed=3, num_classes=5)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.gram, head.gram, rtol=1e-6, atol=1e-3)
    # the next session learned on the device after a reload still gives the joint solution
    x, y, total = parts[2]
    restored.add(x, y, total)
    expected = joint_solution(parts, SIZE, 3, float(restored.ridge))
    assert relative_error(restored.weight, expected) < 1e-4


def test_the_projection_is_regenerated_from_its_seed():
    first, again, other = random_projection(DIM, SIZE, 7), random_projection(DIM, SIZE, 7), random_projection(DIM, SIZE, 8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(float(first.mean())) < 0.05 and abs(float(first.std()) - 1) < 0.05


def test_ridge_is_picked_on_held_out_samples():
    """Few samples, many dimensions: a tiny ridge interpolates noise, so the held-out pick is larger."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, DIM, generator=g)
    y = torch.randint(0, 2, (40,), generator=g)
    head = AnalyticClassifier(DIM, SIZE, seed=0)
    chosen = head.add(x, y, 2, ridges=(1e-6, 1e2, 1e4))
    assert chosen in (1e2, 1e4)
    assert np.isfinite(head.weight.numpy()).all()


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
