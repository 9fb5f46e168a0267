"""`edgecl eval`: several methods side by side, --set, the joint bounds and the plot (plumbing:
random-init backbone, synthetic images; accuracy on real data is test_accuracy.py)."""

import json
import shutil

import pytest
from conftest import PLUMBING_BACKBONE, QUICK_EDGECL, make_image_folder
from test_cli import edgecl, one_line_error

from edgecl.core.analytic import PROJECTION


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    names = ["red", "green", "blue", "yellow", "grey"]
    make_image_folder(root / "train", names, count=8)
    make_image_folder(root / "test", names, count=3, seed=50)
    return root


def quick(*extra):
    settings = [part for key, value in QUICK_EDGECL.items() for part in ("--set", f"{key}={value}")]
    return ["--backbone", PLUMBING_BACKBONE, "--random-init", "--epochs", "2", *settings, "-q", *extra]


def test_methods_side_by_side_with_joint_bounds_and_plot(data, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    report_file, plot = tmp_path / "r.json", tmp_path / "sessions.png"
    result = edgecl(
        "eval",
        data,
        "--init",
        "3",
        "--increment",
        "1",
        "--method",
        "edgecl,simplecil,safe",
        *quick("--joint", "--plot", plot, "--json", report_file),
    )
    assert result.exit_code == 0, result.stderr
    for text in ("edgecl", "simplecil", "joint probe", "slow learner ssf"):
        assert text in result.output
    report = json.loads(report_file.read_text())
    assert [r["method"] for r in report["results"]] == ["edgecl", "simplecil", "safe"]
    assert all(len(r["accuracy_per_session"]) == 3 for r in report["results"])
    assert set(report["joint"]) == {"ncm", "probe", f"analytic_{PROJECTION}"}
    assert set(report["backbones"]) == {"edgecl", "safe"} and report["backbones"]["edgecl"]["images"] == 24
    assert report["protocol"]["configs"]["edgecl"]["safe"]["slow"]["epochs"] == 1  # --set reached the nested config
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_errors(data, tmp_path):
    one_line_error(
        edgecl("eval", data, "--init", "3", "--increment", "1", "--method", "edgecl", *quick("--set", "nope=2")),
        "--set nope",
    )
    one_line_error(
        edgecl("eval", data, "--init", "3", "--increment", "1", "--method", "edgecl,magic", *quick()), "unknown method"
    )
    one_line_error(
        edgecl(
            "eval",
            data,
            "--init",
            "3",
            "--increment",
            "1",
            "--method",
            "edgecl",
            *quick("--plot", tmp_path / "no" / "x.png"),
        ),
        "--plot",
        "does not exist",
    )
    one_line_error(
        edgecl(
            "eval",
            data,
            "--init",
            "3",
            "--increment",
            "1",
            "--method",
            "edgecl",
            *quick("--json", tmp_path / "no" / "r.json"),
        ),
        "--json",
        "does not exist",
    )


def test_a_setting_no_listed_method_has_names_each_and_epochs_need_a_method_that_trains(data):
    plain = ["--backbone", PLUMBING_BACKBONE, "--random-init", "-q"]
    one_line_error(
        edgecl(
            "eval",
            data,
            "--init",
            "3",
            "--increment",
            "1",
            "--method",
            "tosca,simplecil",
            "--set",
            "slow.epochs=0",
            *plain,
        ),
        "method tosca has no setting 'slow'",
        "method simplecil has no setting 'slow'",
    )
    one_line_error(
        edgecl("eval", data, "--init", "3", "--increment", "1", "--method", "simplecil", "--epochs", "3", *plain),
        "--epochs: none of simplecil trains by epochs",
    )


def test_a_class_with_no_readable_training_image_is_named(data, tmp_path):
    broken = shutil.copytree(data, tmp_path / "data")
    for image in (broken / "train" / "grey").iterdir():
        image.write_bytes(b"not an image")
    one_line_error(
        edgecl(
            "eval",
            broken,
            "--init",
            "3",
            "--increment",
            "1",
            "--method",
            "simplecil",
            "--backbone",
            PLUMBING_BACKBONE,
            "--random-init",
            "-q",
        ),
        "class 'grey': no readable training image",
    )


def test_unknown_auroc_after_each_session_and_few_shot_sessions(data, tmp_path):
    report_file = tmp_path / "r.json"
    plain = ["--backbone", PLUMBING_BACKBONE, "--random-init", "-q"]
    result = edgecl(
        "eval",
        data,
        "--init",
        "3",
        "--increment",
        "1",
        "--method",
        "simplecil",
        "--shots",
        "2",
        "--json",
        report_file,
        *plain,
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["protocol"]["shots"] == 2
    assert [a is None for a in report["unknown_auroc"]] == [False, False, True]  # nothing left unseen after the last
    assert all(0 <= a <= 1 for a in report["unknown_auroc"][:2]) and all(
        0 <= f <= 1 for f in report["unknown_fpr95"][:2]
    )
    assert len(report["unknown_auroc_top_probability"]) == 3 and "mean AUROC" in result.output
    one_line_error(
        edgecl("eval", data, "--init", "3", "--increment", "1", "--method", "simplecil", "--shots", "9", *plain),
        "--shots 9: must be from 1 to the training images of the smallest later class",
    )


def test_few_shot_draws_the_same_images_for_the_same_seed():
    import numpy as np

    from edgecl.eval.protocol import few_shot

    labels = np.repeat(np.arange(4), 10)
    chosen = labels >= 2
    a, b = few_shot(labels, chosen, 3, 1993, 1), few_shot(labels, chosen, 3, 1993, 1)
    assert (a == b).all() and a.sum() == 6 and not a[labels < 2].any()
    assert few_shot(labels, chosen, 3, 1993, 0).sum() == 20  # the first session keeps every image
    assert (few_shot(labels, chosen, 3, 7, 1) != a).any()
