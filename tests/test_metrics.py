import numpy as np
import pytest

from edgecl.errors import EdgeclError
from edgecl.eval.datasets import class_order, session_sizes
from edgecl.eval.metrics import accuracy, forgetting, summarize


def test_forgetting_is_mean_drop_from_best_earlier_accuracy():
    matrix = [[0.9], [0.8, 0.7], [0.6, 0.75, 0.5]]
    # session 0: best 0.9 -> 0.6 (0.3); session 1: best 0.7 -> 0.75 (-0.05)
    assert forgetting(matrix) == pytest.approx((0.3 - 0.05) / 2)
    assert forgetting([[0.5]]) == 0.0


def test_summary_fields():
    result = summarize("tosca", [0.9, 0.8, 0.7], [[0.9], [0.9, 0.7], [0.8, 0.6, 0.7]])
    assert result.A_last == 0.7 and result.A_avg == pytest.approx(0.8)
    assert set(result.to_dict()) >= {"method", "accuracy_per_session", "A_last", "A_avg", "forgetting"}


def test_accuracy():
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)


def test_class_order_is_seeded_permutation():
    assert class_order(10, 1993) == class_order(10, 1993)
    assert sorted(class_order(10, 1993)) == list(range(10))
    assert class_order(10, 1993) != class_order(10, 1)


def test_session_sizes():
    assert session_sizes(101, 11, 10) == [11] + [10] * 9
    assert session_sizes(10, 6, 3) == [6, 3, 1]
    with pytest.raises(EdgeclError, match="^init 12"):
        session_sizes(10, 12, 2)
    with pytest.raises(EdgeclError, match="at least 1"):
        session_sizes(10, 2, 0)
