"""The device runtime: choosing the backbone's engine, the import boundary, TensorRT where present."""

import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from conftest import QUICK_EDGECL, requires_fashion_mnist

from edgecl.core import bundle as bundles
from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images
from edgecl.errors import EdgeclError
from edgecl.eval import fashion_mnist
from edgecl.host.export import export_bundle
from edgecl.host.train import train
from edgecl.runtime.embedders import open_embedder
from edgecl.runtime.service import Classifier, learn
from edgecl.runtime.tensorrt_engines import engine_key


def tensorrt_present() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_tensorrt = pytest.mark.skipif(
    not tensorrt_present(), reason="needs the tensorrt package and a CUDA GPU (a Jetson, or an x86 host with TensorRT)"
)


@pytest.fixture
def exported(bundle, base_images):
    export_bundle(bundle, "jetson", [base_images])
    return bundle


def test_default_runtime_is_onnxruntime_once_exported(bundle, base_images):
    assert open_embedder(Bundle.open(bundle)).runtime == "torch"
    export_bundle(bundle, "cpu", [base_images])
    embedder = open_embedder(Bundle.open(bundle))
    assert embedder.runtime == "onnxruntime" and "CPUExecutionProvider" in embedder.reason
    assert "tensorrt: the bundle was exported for target cpu, which has no TensorRT settings" in embedder.passed_over
    with pytest.raises(EdgeclError, match="runtime tensorrt: not available: the bundle was exported for target cpu"):
        open_embedder(Bundle.open(bundle), "tensorrt")


def test_forced_runtime_that_cannot_serve_says_why(bundle):
    with pytest.raises(EdgeclError, match="runtime onnxruntime: not available: the bundle has no backbone.onnx"):
        open_embedder(Bundle.open(bundle), "onnxruntime")
    with pytest.raises(EdgeclError, match="unknown runtime"):
        open_embedder(Bundle.open(bundle), "openvino")
    if not tensorrt_present():
        with pytest.raises(EdgeclError, match="runtime tensorrt: not available"):
            open_embedder(Bundle.open(bundle), "tensorrt")


def test_onnxruntime_and_torch_classify_alike_and_learn_works(exported, base_images, new_images):
    paths = find_images([base_images])
    via_torch, _ = Classifier(exported, "torch").classify(paths, show_progress=False)
    via_ort, _ = Classifier(exported, "onnxruntime").classify(paths, show_progress=False)
    assert [p.top_k[0]["label"] for p in via_ort] == [p.top_k[0]["label"] for p in via_torch]
    assert max(abs(a.score - b.score) for a, b in zip(via_ort, via_torch)) < 1e-3
    result = learn(exported, new_images, runtime="onnxruntime", show_progress=False)
    assert result.runtime == "onnxruntime" and Bundle.open(exported).manifest.export is not None
    paths = find_images([base_images, new_images])
    via_torch, _ = Classifier(exported, "torch").classify(paths, show_progress=False)
    via_ort, _ = Classifier(exported, "onnxruntime").classify(
        paths, show_progress=False
    )  # heads.onnx on the grown heads
    assert [p.top_k[0]["label"] for p in via_ort] == [p.top_k[0]["label"] for p in via_torch]


BOUNDARY = textwrap.dedent(
    """
    import json, sys
    from edgecl.cli.app import main
    sys.argv = ["edgecl", *sys.argv[1:]]
    try:
        main()
    except SystemExit as done:
        code = done.code
    host_only = (
        "timm",
        "onnx",
        "torchvision",
        "edgecl.host.backbones",
        "edgecl.host.train",
        "edgecl.host.export",
        "edgecl.eval.protocol",
    )
    loaded = sorted(m for m in sys.modules if m in host_only or m.split(".")[0] in ("timm", "onnx", "torchvision"))
    print(json.dumps({"code": code, "host_only": loaded}), file=sys.stderr)
    """
)


def run_console(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", BOUNDARY, *args], capture_output=True, text=True, timeout=300)
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_classify_and_learn_on_an_exported_bundle_import_no_host_code(exported, base_images, new_images):
    classified = run_console("classify", str(base_images / "red"), "--bundle", str(exported), "-q")
    assert classified == {"code": 0, "host_only": []}
    learned = run_console("learn", "--images", str(new_images), "--bundle", str(exported), "-q")
    assert learned == {"code": 0, "host_only": []}
    # and the check can fail: the torch runtime needs timm
    assert (
        "timm"
        in run_console("classify", str(base_images / "red"), "--bundle", str(exported), "--runtime", "torch", "-q")[
            "host_only"
        ]
    )


def test_engine_key_names_gpu_tensorrt_precision_and_batch():
    assert engine_key((8, 7), "10.3.0", "fp16", {"min": 1, "opt": 1, "max": 8}) == "sm87-trt10.3.0-fp16-b1.1.8"
    assert engine_key((8, 9), "10.3.0", "fp16", {"min": 1, "opt": 1, "max": 8}) != engine_key(
        (8, 7), "10.3.0", "fp16", {"min": 1, "opt": 1, "max": 8}
    )


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("TensorRT could not parse backbone.onnx: op X"),
        PermissionError("bundle is read-only"),
        EdgeclError("another edgecl process (pid 7) is updating this bundle; gave up after 30s"),
    ],
)
def test_an_engine_that_cannot_be_built_passes_the_backbone_to_onnxruntime(exported, monkeypatch, failure):
    from edgecl.runtime import tensorrt_engines as trt_runtime

    def build_fails(bundle_path, **options):
        assert options["keep_existing"] and options["lock_timeout"] < 60  # on first use: never minutes behind a lock
        raise failure

    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_runtime, "current_key", lambda trt, profile: "sm87-trt10.3.0-fp16-b1.1.8")
    monkeypatch.setattr(trt_runtime, "build_into_bundle", build_fails)
    embedder = open_embedder(Bundle.open(exported))
    assert embedder.runtime == "onnxruntime"
    assert embedder.passed_over == [f"tensorrt: engine sm87-trt10.3.0-fp16-b1.1.8: {failure}"]
    with pytest.raises(
        EdgeclError, match=re.escape(f"runtime tensorrt: not available: engine sm87-trt10.3.0-fp16-b1.1.8: {failure}")
    ):
        open_embedder(Bundle.open(exported), "tensorrt")


def test_an_engine_another_process_built_meanwhile_is_kept_on_first_use(exported, monkeypatch):
    from edgecl.runtime import tensorrt_engines as trt_runtime

    key = "sm87-trt10.3.0-fp16-b1.1.8"

    committed = []

    def build_while_another_process_commits(onnx_model, profile, input_size, timing_cache):
        with bundles.update(exported) as change:
            change.manifest.engines[key] = change.write_file(f"engines/{key}.engine", b"the other process's engine")
        committed.append((exported / "manifest.json").read_bytes())
        return trt_runtime.BuiltEngine(b"this process's engine", b"timing cache", 0)

    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(trt_runtime, "current_key", lambda trt, profile: key)
    monkeypatch.setattr(trt_runtime, "build_engine", build_while_another_process_commits)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Orin (fake)")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 7))
    kept = trt_runtime.build_into_bundle(exported, keep_existing=True)
    assert Bundle.open(exported).read_bytes(kept.entry) == b"the other process's engine"
    assert (exported / "manifest.json").read_bytes() == committed[0]  # not even rewritten: no watch reloads for nothing
    assert sorted(p.name for p in (exported / "engines").iterdir()) == [f"{key}.engine"]
    # `engine build` replaces it, under another name: a reader may be loading the live one
    rebuilt = trt_runtime.build_into_bundle(exported)
    b = Bundle.open(exported)
    assert (
        b.read_bytes(b.manifest.engines[key]) == b"this process's engine"
        and rebuilt.entry["file"] != kept.entry["file"]
    )
    assert sorted(p.name for p in (exported / "engines").iterdir()) == sorted(
        Path(rebuilt.entry[k]).name for k in ("file", "timing_cache")
    )


def test_engine_build_refuses_a_bundle_exported_for_the_cpu(bundle, base_images, monkeypatch):
    from edgecl.runtime import tensorrt_engines as trt_runtime

    export_bundle(bundle, "cpu", [base_images])
    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    with pytest.raises(
        EdgeclError, match="exported for target cpu, which has no TensorRT settings; export again with target jetson"
    ):
        trt_runtime.build_into_bundle(bundle)


def test_a_provider_that_fails_to_start_leaves_stdout_alone(exported, capfd):
    from edgecl.runtime.ort import ort_session

    session = ort_session(
        Bundle.open(exported).path / "backbone.onnx", ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    )
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    assert capfd.readouterr().out == ""  # onnxruntime prints its TensorRT fallback; `--json` output must stay JSON


def test_engine_build_without_tensorrt_is_a_clear_error(exported):
    if tensorrt_present():
        pytest.skip("TensorRT is present here; the error path does not apply")
    from edgecl.runtime.tensorrt_engines import build_into_bundle

    with pytest.raises(EdgeclError, match="cannot build a TensorRT engine here: tensorrt is not installed"):
        build_into_bundle(exported)


@requires_tensorrt
def test_tensorrt_engine_is_built_once_keyed_and_agrees_with_onnxruntime(exported, base_images):
    embedder = open_embedder(Bundle.open(exported), "tensorrt")
    m = Bundle.open(exported).manifest
    ((key, entry),) = m.engines.items()
    assert (
        key in embedder.reason and (exported / entry["file"]).is_file() and (exported / entry["timing_cache"]).is_file()
    )
    paths = find_images([base_images])
    via_trt, _ = Classifier(exported, "tensorrt").classify(paths, show_progress=False)
    via_ort, _ = Classifier(exported, "onnxruntime").classify(paths, show_progress=False)
    agree = sum(a.top_k[0]["label"] == b.top_k[0]["label"] for a, b in zip(via_trt, via_ort)) / len(paths)
    assert agree >= 0.95
    assert Bundle.open(exported).manifest.engines.keys() == m.engines.keys()  # reused, not rebuilt


@requires_tensorrt
def test_engine_for_another_gpu_is_never_loaded(exported):
    m = json.loads((exported / "manifest.json").read_text())
    m["engines"] = {"sm10-trt0.0-fp16-b1.1.8": {"file": "backbone.onnx", "sha256": m["export"]["sha256"]}}
    (exported / "manifest.json").write_text(json.dumps(m))
    embedder = open_embedder(Bundle.open(exported), "tensorrt")
    assert "sm10" not in embedder.reason and len(Bundle.open(exported).manifest.engines) == 2


@pytest.mark.slow
@requires_fashion_mnist
def test_onnxruntime_matches_pytorch_labels_on_fashion_mnist(tmp_path):
    fashion_mnist.write_image_folders(tmp_path / "train", "train", 30, [0, 1, 2, 3, 4, 5], seed=0)
    tests = fashion_mnist.write_image_folders(tmp_path / "test", "test", 40, [0, 1, 2, 3, 4, 5], seed=0)
    path = tmp_path / "bundle"
    train(tmp_path / "train", path, settings=QUICK_EDGECL, show_progress=False)
    export_bundle(path, "cpu", [tmp_path / "train"])
    paths = [p for group in tests.values() for p in group]
    via_torch, _ = Classifier(path, "torch").classify(paths, show_progress=False)
    ort = Classifier(path, "onnxruntime")
    assert ort.heads.runtime == "onnxruntime"  # edgecl's heads (TOSCA + SAFE) through heads.onnx
    via_ort, _ = ort.classify(paths, show_progress=False)
    assert [p.top_k[0]["label"] for p in via_ort] == [p.top_k[0]["label"] for p in via_torch]
    correct = sum(p.top_k[0]["label"] == p.path.split("/")[-2] for p in via_ort) / len(paths)
    assert correct > 0.6, correct  # real weights and real images: far above chance (1/6)


def test_onnxruntime_tensorrt_provider_gets_the_profile(tmp_path):
    from edgecl.host.targets import load_target
    from edgecl.runtime.ort import tensorrt_provider_options

    options = tensorrt_provider_options(load_target("jetson").to_dict(), [3, 224, 224], tmp_path)
    assert options["trt_fp16_enable"] == "True" and options["trt_layer_norm_fp32_fallback"] == "True"
    assert options["trt_max_workspace_size"] == str(1024 << 20)
    assert (
        options["trt_profile_min_shapes"],
        options["trt_profile_opt_shapes"],
        options["trt_profile_max_shapes"],
    ) == ("images:1x3x224x224", "images:1x3x224x224", "images:8x3x224x224")
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    x86 = tensorrt_provider_options(load_target("x86-cuda").to_dict(), [3, 256, 256], tmp_path)
    assert x86["trt_profile_max_shapes"] == f"images:{load_target('x86-cuda').batch.max}x3x256x256"


def test_a_damaged_export_passes_the_work_to_pytorch_and_says_why(exported, base_images):
    graph = bytearray((exported / "backbone.onnx").read_bytes())
    graph[1000:1022] = b"not the exported graph"  # the same size: the checksum tells
    (exported / "backbone.onnx").write_bytes(bytes(graph))
    (exported / "heads.onnx").unlink()
    damaged = "backbone.onnx: checksum mismatch; the bundle is damaged; run `edgecl export` on the host again"
    embedder = open_embedder(Bundle.open(exported))
    assert embedder.runtime == "torch" and any(
        r.startswith("onnxruntime: ") and r.endswith(damaged) for r in embedder.passed_over
    )
    with pytest.raises(EdgeclError, match="runtime onnxruntime: not available: .*" + damaged.replace("`", ".")):
        open_embedder(Bundle.open(exported), "onnxruntime")
    classifier = Classifier(exported)
    assert classifier.embedder.runtime == "torch" and classifier.heads.runtime == "torch"
    from edgecl.runtime.heads import open_heads

    heads = open_heads(Bundle.open(exported), classifier.method, "onnxruntime")
    assert (
        heads.runtime == "torch"
        and "heads.onnx: missing; the bundle is damaged; run `edgecl export` on the host again" in heads.reason
    )
    # info says so too, and lists the missing file instead of failing on its size
    from test_cli import edgecl

    info = edgecl("info", "--bundle", exported)
    assert info.exit_code == 0, info.stderr
    assert "heads.onnx MISSING" in info.output and "not onnxruntime: " in info.output
