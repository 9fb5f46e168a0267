"""heads.onnx: every method's inference exported once, run by onnxruntime as the heads grow."""

import numpy as np
import onnx
import pytest
import torch
from test_methods import clustered, fast, learn_sessions

from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images, load_image
from edgecl.core.methods import METHODS
from edgecl.core.preprocess import preprocess
from edgecl.errors import EdgeclError
from edgecl.host.export import export_bundle
from edgecl.host.heads_onnx import export_checked, export_heads
from edgecl.runtime.heads import FEATURES, HeadsUnavailable, OrtHeads, open_heads
from edgecl.runtime.service import Classifier, learn


@pytest.mark.parametrize("name", sorted(METHODS))
def test_graph_exported_after_the_first_session_serves_later_sessions(name):
    method = learn_sessions(fast(name), sessions=((0, 3),))
    graph = export_heads(method)
    inputs = {i.name for i in onnx.load_from_string(graph).graph.input}
    assert FEATURES in inputs and not any(
        ".factor" in n or ".gram" in n or ".moment" in n for n in inputs
    )  # what inference never reads stays out
    learn_sessions(method, sessions=((3, 2), (5, 1)))  # more sessions and classes than the graph was exported with
    heads = OrtHeads(graph, method)
    features, _ = clustered(6, 5, seed=7)
    expected = method.predict(features)
    assert expected.shape == (30, 6)
    torch.testing.assert_close(heads(features), expected, rtol=0, atol=1e-5)
    one_by_one = torch.cat([heads(features[i : i + 1]) for i in range(len(features))])
    torch.testing.assert_close(one_by_one, heads(features), rtol=0, atol=1e-6)  # a sample's output ignores its batch


def test_a_graph_is_refused_for_heads_it_was_not_made_for():
    graph = export_heads(learn_sessions(fast("simplecil"), sessions=((0, 2),)))
    with pytest.raises(HeadsUnavailable, match="wants tensors the heads lack"):
        OrtHeads(graph, learn_sessions(fast("safe"), sessions=((0, 2),)))
    with pytest.raises(HeadsUnavailable, match="cannot load heads.onnx"):
        OrtHeads(b"not a graph", learn_sessions(fast("simplecil"), sessions=((0, 2),)))


def test_an_exporter_failure_is_reported_not_raised(monkeypatch):
    def broken(method):
        raise RuntimeError("unsupported op\nmore lines")

    monkeypatch.setattr("edgecl.host.heads_onnx.export_heads", broken)
    result = export_checked(learn_sessions(fast("simplecil"), sessions=((0, 2),)), torch.randn(3, 32))
    assert result.data is None and result.error == "the heads could not be exported (RuntimeError: unsupported op)"


def test_export_writes_heads_onnx_and_classify_uses_it_before_and_after_learn(bundle, base_images, new_images):
    report = export_bundle(bundle, "cpu", [base_images])
    assert report.heads.data is not None and report.heads.max_abs_diff <= 1e-5
    entry = Bundle.open(bundle).manifest.export["heads"]
    assert (bundle / entry["file"]).is_file() and entry["parity"]["max_abs_diff"] == report.heads.max_abs_diff
    learn(bundle, new_images, show_progress=False)
    ort = Classifier(bundle)
    assert ort.heads.runtime == "onnxruntime"
    features = ort.embedder(_images(ort, base_images))
    torch.testing.assert_close(ort.heads.predict(features), ort.method.predict(features), rtol=0, atol=1e-5)
    # the heads run on the backbone's thread pool (the pinned onnxruntime offers one pool per process)
    assert ort.heads.predict.session.get_session_options().use_per_session_threads is False
    assert Classifier(bundle, "torch").heads.runtime == "torch"  # --runtime torch: PyTorch all the way
    assert Classifier(bundle, heads="torch").heads.runtime == "torch"


def _images(classifier, folder):
    return np.stack([preprocess(load_image(p), classifier.preprocess) for p in find_images([folder])])


def test_without_heads_onnx_the_heads_run_in_pytorch_and_say_why(bundle, base_images, monkeypatch):
    monkeypatch.setattr("edgecl.host.heads_onnx.export_heads", lambda method: b"garbage")
    report = export_bundle(bundle, "cpu", [base_images])
    assert report.heads.data is None and "could not be exported" in report.heads.error
    b = Bundle.open(bundle)
    assert "file" not in b.manifest.export["heads"] and not (bundle / "heads.onnx").exists()
    classifier = Classifier(bundle)
    assert classifier.embedder.runtime == "onnxruntime" and classifier.heads.runtime == "torch"
    assert "could not be exported" in classifier.heads.reason
    with pytest.raises(EdgeclError, match="heads through onnxruntime: not available: the heads could not be exported"):
        open_heads(b, classifier.method, "onnxruntime", "onnxruntime")
