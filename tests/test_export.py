import json

import numpy as np
import onnx
import pytest
from conftest import QUICK_EDGECL, requires_fashion_mnist

from edgecl.core.bundle import Bundle
from edgecl.errors import EdgeclError
from edgecl.eval import fashion_mnist
from edgecl.host.backbone_onnx import BACKBONE_PARITY_ATOL
from edgecl.host.export import export_bundle
from edgecl.host.targets import available_targets, load_target
from edgecl.host.train import train
from edgecl.runtime.ort import INPUT_NAME, ort_session


def test_every_required_target_has_a_profile():
    profiles = available_targets()
    assert {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "x86-cuda", "cpu"} <= set(profiles)
    assert load_target("jetson").name == "jetson-orin-nano"
    for profile in profiles.values():
        assert profile.batch.min <= profile.batch.opt <= profile.batch.max
        assert profile.onnxruntime_providers[-1] == "CPUExecutionProvider"
        if profile.precision == "fp16":
            assert "LayerNormalization" in profile.fp32_layers


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(EdgeclError, match=r"unknown target \(known: cpu, .*jetson-orin-nano \(jetson\)"):
        load_target("raspberry")


def test_export_writes_a_checked_onnx_with_a_dynamic_batch(bundle, base_images):
    report = export_bundle(bundle, "jetson", [base_images])
    assert report.real_images and report.parity_images == 18
    assert report.max_abs_diff <= BACKBONE_PARITY_ATOL
    m = Bundle.open(bundle).manifest
    assert m.export["target"] == "jetson-orin-nano" and m.export["profile"]["precision"] == "fp16"
    assert m.export["parity"]["max_abs_diff"] == report.max_abs_diff
    model = onnx.load(str(bundle / "backbone.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    session = ort_session(bundle / "backbone.onnx", ["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {INPUT_NAME: np.zeros((batch, 3, 160, 160), np.float32)})[0]
        assert out.shape == (batch, m.backbone["embedding_dim"])


def test_vit_exports_with_one_layernorm_op_and_unfused_attention(tmp_path, base_images):
    path = tmp_path / "vit"
    train(
        base_images,
        path,
        backbone="vit_tiny_patch16_224",
        random_init=True,
        epochs=1,
        settings=QUICK_EDGECL,
        show_progress=False,
    )
    report = export_bundle(path, "cpu", [base_images])
    assert report.max_abs_diff <= BACKBONE_PARITY_ATOL
    ops = [node.op_type for node in onnx.load(str(path / "backbone.onnx")).graph.node]
    assert ops.count("LayerNormalization") == 2 * 12 + 1  # two per block, the final norm
    assert "Softmax" in ops and "ReduceMean" not in ops


def test_re_export_drops_engines_built_from_the_old_onnx(bundle):
    export_bundle(bundle, "cpu")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {"sm87-trt10.3-fp16-b1.1.8": {"file": "backbone.onnx", "sha256": "x"}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    export_bundle(bundle, "x86-cuda")
    m = Bundle.open(bundle).manifest
    assert m.engines == {} and m.export["target"] == "x86-cuda"


@pytest.mark.slow
@requires_fashion_mnist
def test_efficientnet_lite0_parity_on_real_images(tmp_path):
    images = fashion_mnist.write_image_folders(tmp_path / "data", "train", 12, [0, 1, 2], seed=0)
    path = tmp_path / "lite0"
    train(tmp_path / "data", path, epochs=1, settings=QUICK_EDGECL, show_progress=False)
    report = export_bundle(path, "jetson-orin-nx", [tmp_path / "data"])
    assert report.real_images and report.parity_images == 32
    assert report.max_abs_diff <= BACKBONE_PARITY_ATOL, report.max_abs_diff
    assert sum(len(v) for v in images.values()) == 36
