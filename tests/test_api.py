"""The Python API: edgecl.load -> Model.classify on camera frames, Model.learn from frames, reload
(random-init backbones: plumbing, not accuracy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import edgecl
from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images
from edgecl.runtime.service import Classifier, learn


def frames_of(folder):
    return [np.asarray(Image.open(p).convert("RGB")) for p in find_images([folder])]


def test_a_frame_a_pil_image_and_a_path_give_the_file_s_prediction(bundle, base_images):
    path = find_images([base_images / "red"])[0]
    frame = np.asarray(Image.open(path).convert("RGB"))
    model = edgecl.load(bundle)
    by_file, _ = Classifier(bundle).classify([path], top_k=3, show_progress=False)
    for image in (frame, Image.open(path), path, str(path)):
        prediction = model.classify(image, top_k=3)
        assert isinstance(prediction, edgecl.Prediction)
        assert [t["label"] for t in prediction.top_k] == [t["label"] for t in by_file[0].top_k]
        assert [t["score"] for t in prediction.top_k] == pytest.approx([t["score"] for t in by_file[0].top_k], abs=1e-6)
    assert model.classify(frame).path is None and model.classify(path).path == str(path)
    assert (
        len(model.classify(frame, top_k=3).top_k) == 3 and model.classify(frame).top_k[0]["label"] == by_file[0].label
    )


def test_a_list_or_a_stack_of_frames_is_classified_image_by_image(bundle, base_images):
    frames = frames_of(base_images)
    model = edgecl.load(bundle)
    together = model.classify(frames)
    stacked = model.classify(np.stack(frames))
    alone = [model.classify(f) for f in frames]
    assert (
        [p.top_k[0]["label"] for p in together]
        == [p.top_k[0]["label"] for p in stacked]
        == [p.top_k[0]["label"] for p in alone]
    )
    assert max(abs(a.score - b.score) for a, b in zip(together, alone)) < 1e-5  # batch-independent, to float rounding
    grey = model.classify(frames[0][:, :, 0])  # an H x W grey frame becomes RGB, as a grey file does
    assert grey.label in [*model.classes, "unknown"]
    assert model.classify(frames[0][:, :, :1]).top_k == grey.top_k  # H x W x 1, as a mono camera gives


def test_learn_from_frames_commits_a_session_the_model_then_predicts_with(bundle, new_images):
    model = edgecl.load(bundle)
    result = model.learn({"yellow": frames_of(new_images / "yellow"), "grey": frames_of(new_images / "grey")})
    assert result.session.classes == ["yellow", "grey"] and result.session.images == 12
    assert model.classes == ["blue", "green", "red", "yellow", "grey"] == Bundle.open(bundle).manifest.class_names
    assert len(model.sessions) == 2 and model.classify(frames_of(new_images / "yellow")[0]).label in [
        *model.classes,
        "unknown",
    ]


def test_frames_learned_as_files_give_identical_heads(bundle, tmp_path, new_images):
    twin = shutil.copytree(bundle, tmp_path / "twin")
    stacked = shutil.copytree(bundle, tmp_path / "stacked")
    edgecl.load(bundle).learn({"yellow": frames_of(new_images / "yellow")})
    edgecl.load(stacked).learn({"yellow": np.stack(frames_of(new_images / "yellow"))})  # N x H x W x 3
    learn(twin, new_images / "yellow", show_progress=False)
    heads = [Bundle.open(b).manifest.heads for b in (bundle, twin, stacked)]
    assert heads[0]["journal"] and heads[0] == heads[1] == heads[2]  # the session's journal entry too


def test_reload_picks_up_a_session_another_process_learned(bundle, new_images):
    model = edgecl.load(bundle)
    assert model.reload() is False
    runtime_before = model._classifier.embedder
    learn(bundle, new_images / "grey", show_progress=False)
    assert "grey" not in model.classes
    assert model.reload() is True and model.classes[-1] == "grey"
    assert (
        model._classifier.embedder is runtime_before
    )  # same backbone: its engine is kept, only the heads are read again


def test_forget_rename_and_undo_commit_and_the_model_predicts_with_them(bundle, base_images):
    model = edgecl.load(bundle, min_score=0)
    before = Bundle.open(bundle).manifest.heads
    red = frames_of(base_images / "red")
    model.forget("red")
    assert "red" not in model.classes and all(p.label != "red" for p in model.classify(red))
    model.rename("blue", "navy")
    assert model.classes == ["navy", "green"] == Bundle.open(bundle).manifest.active_class_names
    model.undo()
    model.undo()
    assert model.classes == ["blue", "green", "red"] and Bundle.open(bundle).manifest.heads == before
    with pytest.raises(edgecl.EdgeclError, match="name purple: the bundle has no class of that name"):
        model.forget("purple")


@pytest.mark.parametrize(
    "images, message",
    [
        (
            np.zeros((8, 8, 3), np.float32),
            "images: an image array must be .* dtype uint8; got shape \\(8, 8, 3\\), dtype float32",
        ),
        (np.zeros((8, 8, 5), np.uint8), "images: an image array must be H x W x 3"),
        ("no-such.jpg", "images: no-such.jpg: no such file"),
        (42, "images: int is not an image"),
        ([np.zeros((8, 8, 3), np.uint8), 3.5], r"images\[1\]: float is not an image"),
    ],
)
def test_a_bad_image_is_one_clear_error_naming_the_parameter(bundle, images, message):
    with pytest.raises(edgecl.EdgeclError, match=message):
        edgecl.load(bundle).classify(images)


def test_an_unreadable_file_names_itself(bundle, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(edgecl.EdgeclError, match=r"images\[0\]: cannot be read \(.*broken.png"):
        edgecl.load(bundle).classify(broken)


@pytest.mark.parametrize(
    "examples, message",
    [
        ({}, "examples: give {class name: \\[images\\]}"),
        ({"bolt": []}, r"examples\['bolt'\]: give a list of at least one image"),
        ({"bolt": np.zeros((8, 8, 3), np.uint8)}, r"examples\['bolt'\]: give a list"),
        ({"bo\tlt": [np.zeros((8, 8, 3), np.uint8)]}, "not a usable class name"),
        ({"unknown": [np.zeros((8, 8, 3), np.uint8)]}, "'unknown' is what edgecl answers"),
    ],
)
def test_bad_examples_are_refused_and_the_bundle_is_unchanged(bundle, examples, message):
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(edgecl.EdgeclError, match=message):
        edgecl.load(bundle).learn(examples)
    assert (bundle / "manifest.json").read_bytes() == before


def test_messages_name_parameters_in_python_and_flags_on_the_command_line(tmp_path, base_images):
    from edgecl.cli.messages import cli_message

    with pytest.raises(edgecl.EdgeclError) as caught:
        edgecl.train(base_images, tmp_path / "b", backbone="no_such_model_xyz")
    assert str(caught.value).startswith("backbone no_such_model_xyz: not a timm model")
    assert cli_message(caught.value).startswith("--backbone no_such_model_xyz: not a timm model")


@pytest.mark.parametrize("slow_epochs", [-1, 1.5, True])
def test_slow_epochs_is_checked_before_any_training(tmp_path, base_images, slow_epochs):
    from edgecl.cli.messages import cli_message

    with pytest.raises(edgecl.EdgeclError) as caught:
        edgecl.train(base_images, tmp_path / "b", backbone="test_efficientnet", slow_epochs=slow_epochs)
    assert str(caught.value).startswith(f"slow_epochs {slow_epochs!r}: give a whole number")
    assert cli_message(caught.value).startswith(f"--slow-epochs {slow_epochs!r}:")
    assert not (tmp_path / "b").exists()


def test_slow_epochs_needs_a_method_with_a_slow_learner(tmp_path, base_images):
    with pytest.raises(edgecl.EdgeclError, match="slow_epochs: method tosca has no slow learner"):
        edgecl.train(base_images, tmp_path / "b", backbone="test_efficientnet", method="tosca", slow_epochs=0)


def test_train_and_export_are_thin_functions_over_what_the_cli_runs(tmp_path, base_images):
    report = edgecl.train(
        base_images, bundle=tmp_path / "b", backbone="test_efficientnet", random_init=True, method="simplecil"
    )
    assert report.bundle == tmp_path / "b" and report.classes == ["blue", "green", "red"] and report.images == 18
    exported = edgecl.export(report.bundle, "cpu", images=str(base_images))  # one folder, or a list of them
    assert exported.real_images and exported.file.name == "backbone.onnx" and exported.heads.data is not None
    assert len(repr(exported)) < 2000  # printing the report shows its figures, not heads.onnx's bytes
    assert edgecl.load(report.bundle).runtime == "onnxruntime"


API_BOUNDARY = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import edgecl
    cheap = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "onnx"))
    model = edgecl.load(sys.argv[1])
    frame = np.full((48, 40, 3), 200, np.uint8)
    model.classify(frame)
    model.learn({"bright": [frame, frame[::-1]]})
    host_only = sorted(
        m for m in sys.modules if m.split(".")[0] in ("timm", "onnx", "torchvision") or m.startswith("edgecl.host")
    )
    print(json.dumps({"on_import": cheap, "host_only": host_only, "classes": model.classes}))
    """
)


def test_the_api_on_a_device_imports_no_host_code(bundle, base_images):
    edgecl.export(bundle, "cpu", [base_images])
    done = subprocess.run(
        [sys.executable, "-c", API_BOUNDARY, str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["on_import"] == []  # `import edgecl` alone loads neither torch nor the rest
    assert report["host_only"] == [] and report["classes"][-1] == "bright"
