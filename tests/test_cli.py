"""The command line: happy paths, and one-line errors with exit code 1 that leave the bundle as it was."""

import json
import re
import shutil
from pathlib import Path

import torch
from conftest import PLUMBING_BACKBONE, make_image_folder
from test_bundle import snapshot
from typer.testing import CliRunner

from edgecl.cli.app import app
from edgecl.core.bundle import Bundle
from edgecl.core.methods import method_config

runner = CliRunner()


def edgecl(*args: str, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_explains_every_command():
    result = edgecl("--help")
    assert result.exit_code == 0
    for command in ("train", "learn", "classify", "info", "eval", "demo", "methods", "export"):
        assert command in result.output
        sub = edgecl(command, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_methods_lists_every_setting_with_its_default():
    result = edgecl("methods")
    assert result.exit_code == 0
    for line in (
        "edgecl: TOSCA + SAFE",
        "  safe.slow.epochs = 20",
        "  tosca.bottleneck = 48",
        "  use_tosca = true",
        "  feature_power = auto",
        "  safe.class_balance = 0.75",
        "simplecil:",
    ):
        assert line in result.output
    one_line_error(edgecl("methods", "nope"), "nope: unknown method (known: edgecl, ")


def test_usage_errors_exit_2(bundle):
    assert edgecl("classify", "--bundle", bundle, "--no-such-flag", "x.png").exit_code == 2
    assert edgecl("classify", "--bundle", bundle, "--top-k", "0", "x.png").exit_code == 2
    wrong = edgecl("classify", "--bundle", bundle, "--runtime", "tensorflow", "x.png")
    assert wrong.exit_code == 2 and "'tensorflow' is not one of tensorrt, onnxruntime, torch" in wrong.stderr


def test_train_learn_classify_info(tmp_path, base_images, new_images):
    out = tmp_path / "b"
    short = [
        "--epochs",
        "2",
        "--set",
        "tosca.min_steps=0",
        "--set",
        "safe.min_steps=0",
        "--set",
        "safe.slow.epochs=1",
        "--set",
        "safe.projection=256",
    ]
    result = edgecl("train", base_images, "--out", out, "--backbone", PLUMBING_BACKBONE, "--random-init", *short, "-q")
    assert result.exit_code == 0, result.stderr
    assert "created" in result.output and "3 classes" in result.output and "method edgecl" in result.output
    backbone = Bundle.open(out).manifest.backbone
    assert (
        backbone["slow_learner"]["tuner"] == "ssf"
        and backbone["slow_learner"]["epochs"] == 1
        and backbone["tuner"] is None
    )
    assert backbone["slow_learner"]["device"] == "cpu"
    result = edgecl("learn", "--images", new_images / "yellow", "--label", "yellow[m6]", "--bundle", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert "learned yellow[m6] as session 1" in result.output  # printed as given, not read as console markup
    result = edgecl("learn", "--images", new_images / "grey", "--label", "silver", "--bundle", out, "-q", "--json")
    assert result.exit_code == 0, result.stderr
    learned = json.loads(result.output)
    assert learned["classes"] == ["silver"] and learned["lookalikes"] == {} and "known_histogram" not in learned
    m = Bundle.open(out).manifest
    assert [(c.name, c.session) for c in m.classes] == [
        ("blue", 0),
        ("green", 0),
        ("red", 0),
        ("yellow[m6]", 1),
        ("silver", 2),
    ]

    images = sorted((base_images / "red").iterdir())[:2]
    result = edgecl("classify", *images, "--bundle", out, "-q")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    path, label, score = lines[0].split("\t")
    assert path == str(images[0]) and label in [*m.class_names, "unknown"] and 0 <= float(score) <= 1

    result = edgecl(
        "classify", base_images / "red", "--bundle", out, "--json", "--top-k", "3", "--min-score", "0", "-q"
    )
    records = json.loads(result.stdout)
    assert len(records) == 6
    assert set(records[0]) == {"path", "label", "score", "top_k", "known"}
    assert len(records[0]["top_k"]) == 3 and records[0]["top_k"][0]["label"] == records[0]["label"]
    scores = [t["score"] for t in records[0]["top_k"]]
    assert scores == sorted(scores, reverse=True)

    result = edgecl("info", "--bundle", out)
    assert result.exit_code == 0, result.stderr
    for text in (
        "test_efficientnet",
        "tosca",
        "silver",
        "runtime",
        "torch",
        "slow learner ssf: 1 epoch on",
        "merged into the weights",
        "settings other than the defaults: ",
        "tosca.min_steps=0",
        "safe.slow.epochs=1",
        "safe.projection=256",
        "training images pass, each scored against its class's mean without it",
        f"the heads see the embedding to the power {m.heads['structure']['feature_power']:g} (chosen at the first",
    ):
        assert text in result.output, result.output
    info = json.loads(edgecl("info", "--bundle", out, "--json").output)
    assert info["runtime"] == "torch" and len(info["manifest"]["sessions"]) == 3


def test_bundle_defaults_to_environment_variable(bundle, base_images):
    result = edgecl("classify", base_images / "red" / "img_000.png", "-q", env={"EDGECL_BUNDLE": str(bundle)})
    assert result.exit_code == 0, result.stderr


def test_train_input_errors(tmp_path, base_images):
    common = ["--backbone", PLUMBING_BACKBONE, "--random-init", "-q"]
    one_line_error(edgecl("train", tmp_path / "missing", "--out", tmp_path / "o", *common), "missing: no such folder")
    (tmp_path / "empty").mkdir()
    one_line_error(edgecl("train", tmp_path / "empty", "--out", tmp_path / "o", *common), "no class folders")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("hi")
    one_line_error(edgecl("train", tmp_path / "noimages", "--out", tmp_path / "o", *common), "cat: no images")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "taken", *common), "taken: exists and is not an edgecl bundle"
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "taken", "--force", *common),
        "taken: exists and is not an edgecl bundle",
    )
    assert (tmp_path / "taken" / "file").read_text() == "x"  # --force replaces bundles only
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "taken" / "file" / "b", *common),
        "cannot be created",
        "taken/file is not a folder",
    )
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")
    one_line_error(edgecl("train", base_images, "--out", tmp_path / "old", *common), "already exists; pass --force")
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--backbone", "resnet_9000", "-q"), "not a timm model"
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--method", "magic", *common), "unknown method"
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--method", "simplecil", "--epochs", "5", *common),
        "--epochs: method simplecil trains nothing by epochs",
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--set", "nope=1", *common), "--set nope", "no setting"
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--set", "safe.slow.epochs=many", *common),
        "not a valid int",
    )
    one_line_error(
        edgecl("train", base_images, "--out", tmp_path / "o", "--set", "use_tosca", *common), "expected KEY=VALUE"
    )
    one_line_error(
        edgecl(
            "train", base_images, "--out", tmp_path / "o", "--set", "safe.slow.tuner=xyz", "--backbone", "resnet_9000"
        ),
        "slow learner tuner 'xyz': unknown",
    )  # before the backbone: its name is wrong too
    if not torch.cuda.is_available():
        one_line_error(
            edgecl("train", base_images, "--out", tmp_path / "o", "--device", "cuda", *common),
            "--device cuda",
            "not available",
        )
    one_line_error(
        edgecl(
            "train",
            base_images,
            "--out",
            tmp_path / "o",
            "--backbone",
            PLUMBING_BACKBONE,
            "--weights",
            tmp_path / "w.pth",
            "-q",
        ),
        "--weights",
        "no such file",
    )
    mixed = Path(shutil.copytree(base_images, tmp_path / "mixed"))
    shutil.copy(mixed / "red" / "img_000.png", mixed / "loose.png")
    one_line_error(
        edgecl("train", mixed, "--out", tmp_path / "o", *common),
        "holds 1 image(s) beside its class folders",
        "loose.png",
    )
    assert not (tmp_path / "o").exists()


def test_learn_errors_leave_the_bundle_unchanged(bundle, tmp_path, new_images, base_images):
    before = snapshot(bundle)
    one_line_error(edgecl("learn", "--images", tmp_path / "missing", "--bundle", bundle), "no such folder")
    (tmp_path / "empty").mkdir()
    one_line_error(edgecl("learn", "--images", tmp_path / "empty", "--bundle", bundle), "no images")
    one_line_error(
        edgecl("learn", "--images", new_images / "grey", "--label", "unknown", "--bundle", bundle), "'unknown' is what"
    )
    one_line_error(
        edgecl("learn", "--images", new_images, "--label", "x", "--bundle", bundle), "--label names one class"
    )
    mixed = Path(shutil.copytree(new_images, tmp_path / "mixed"))
    shutil.copy(mixed / "grey" / "img_000.png", mixed / "loose.png")
    one_line_error(edgecl("learn", "--images", mixed, "--bundle", bundle), "both images and class folders")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.png").write_bytes((new_images / "grey" / "img_000.png").read_bytes()[:60])
    one_line_error(
        edgecl("learn", "--images", broken, "--bundle", bundle, "-q"),
        "class broken",
        "none of its 2 image(s) could be read",
        "a.jpg",
    )
    one_line_error(edgecl("learn", "--images", new_images, "--bundle", tmp_path / "nobundle"), "no such bundle")
    one_line_error(edgecl("learn", "--images", new_images, "--bundle", tmp_path), "not an edgecl bundle")
    assert snapshot(bundle) == before


def test_unreadable_images_are_skipped_with_a_warning(bundle, tmp_path):
    folder = make_image_folder(tmp_path, ["purple"]) / "purple"
    (folder / "zz_truncated.png").write_bytes((folder / "img_000.png").read_bytes()[:80])
    (folder / "zz_garbage.jpg").write_bytes(b"\x00" * 100)
    result = edgecl("learn", "--images", folder, "--bundle", bundle, "-q")
    assert result.exit_code == 0, result.stderr
    assert "warning: skipped 2 unreadable image(s)" in result.stderr
    assert "zz_truncated.png" in result.stderr and "zz_garbage.jpg" in result.stderr
    assert Bundle.open(bundle).manifest.sessions[-1].images == 6


def test_classify_of_only_unreadable_images_is_a_one_line_error(bundle, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    one_line_error(
        edgecl("classify", tmp_path / "broken.jpg", "--bundle", bundle, "-q"), "none of the 1 image(s) could be read"
    )


def test_classify_errors(bundle, tmp_path):
    one_line_error(edgecl("classify", tmp_path / "nothing.png", "--bundle", bundle), "no such file or folder")
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(edgecl("classify", tmp_path / "notes.txt", "--bundle", bundle), "not an image file")
    (tmp_path / "empty").mkdir()
    one_line_error(edgecl("classify", tmp_path / "empty", "--bundle", bundle), "no images")
    one_line_error(edgecl("classify", tmp_path, "--bundle", tmp_path / "none"), "no such bundle")


def test_an_os_error_is_one_line_naming_the_file(bundle, base_images, tmp_path):
    (tmp_path / "a-file").write_text("")
    one_line_error(
        edgecl("watch", base_images / "red", "--log", tmp_path / "a-file" / "log.jsonl", "--once", "--bundle", bundle),
        "a-file: ",
    )


def test_a_reader_that_closes_the_pipe_early_gets_no_error(bundle, base_images):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecl", "classify", str(base_images), "--bundle", str(bundle), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `edgecl classify dir | head -0`
    assert proc.wait(timeout=300) == 1 and proc.stderr.read() == b""


def test_every_option_says_what_to_type_not_its_type():
    commands = [[c.name] for c in app.registered_commands] + [["engine", "build"]]
    for words in commands:
        text = runner.invoke(app, [*words, "--help"], terminal_width=200).output
        assert "--lock-timeout" not in text or "--lock-timeout SECONDS" in text, (words, text)
        assert not re.search(r"--[a-z-]+ <", text), (words, text)


def test_info_names_the_settings_a_bundle_predates():
    from edgecl.cli.device_commands import _settings_changed

    assert _settings_changed("edgecl", {}) == (
        'settings other than the defaults: tosca.min_steps=400, safe.projection_kind="gaussian", safe.min_steps=400, '
        "safe.class_balance=0.0, temperature=1.0, feature_power=1.0, whiten=false"
    )
    assert _settings_changed("edgecl", method_config("edgecl").to_dict()) == "default settings"


def test_a_bundle_never_exported_says_so_after_the_answers(bundle, base_images, new_images):
    result = edgecl("classify", base_images / "red", "--bundle", bundle, "-q")
    assert result.exit_code == 0 and result.stdout.count("\n") == 6, result.stderr
    assert result.stderr.startswith(f"note: {bundle} is not exported, so PyTorch ran its backbone")
    result = edgecl("learn", "--images", new_images / "grey", "--bundle", bundle, "-q")
    assert result.exit_code == 0 and "is not exported" in result.stderr, result.stderr
    assert edgecl("export", "--target", "cpu", "--bundle", bundle, "--images", base_images).exit_code == 0
    result = edgecl("classify", base_images / "red", "--bundle", bundle, "-q")
    assert result.exit_code == 0 and "not exported" not in result.stderr, result.stderr
