"""The device services end to end (random-init backbones: plumbing, not accuracy)."""

import json
import shutil

import pytest
import torch
from conftest import QUICK_EDGECL

from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images
from edgecl.core.session import load_method, session_generator
from edgecl.errors import EdgeclError
from edgecl.host.train import train
from edgecl.runtime.service import Classifier, learn


def test_classifying_one_at_a_time_or_all_together_gives_the_same_answers(bundle, base_images, new_images):
    learn(bundle, new_images, show_progress=False)
    paths = find_images([base_images, new_images])
    classifier = Classifier(bundle)
    together, _ = classifier.classify(paths, show_progress=False)
    alone = [classifier.classify([p], show_progress=False)[0][0] for p in paths]
    assert [p.top_k[0]["label"] for p in together] == [p.top_k[0]["label"] for p in alone]
    # identical up to float rounding: BLAS kernels for batch 1 and batch 8 sum in different orders
    assert max(abs(a.score - b.score) for a, b in zip(together, alone)) < 1e-5
    assert max(abs(a.known - b.known) for a, b in zip(together, alone)) < 1e-5
    reversed_order, _ = classifier.classify(paths[::-1], show_progress=False)
    assert [p.top_k[0]["label"] for p in reversed_order[::-1]] == [p.top_k[0]["label"] for p in together]


def test_vit_bundle_uses_the_cls_embedding_end_to_end(tmp_path, base_images, new_images):
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
    m = Bundle.open(path).manifest
    assert m.backbone["embedding_dim"] == 192 and m.preprocess["input_size"] == [3, 224, 224]
    learn(path, new_images / "yellow", show_progress=False)
    predictions, skipped = Classifier(path).classify(find_images([new_images]), top_k=2, show_progress=False)
    assert skipped == [] and len(predictions) == 12
    assert all(p.label in ("blue", "green", "red", "yellow", "unknown") for p in predictions)


def test_learn_reports_where_the_time_went(bundle, new_images):
    result = learn(bundle, new_images, show_progress=False)
    assert result.runtime == "torch"
    assert result.seconds_backbone > 0 and result.seconds_heads > 0
    assert result.session.images == 12 and result.session.classes == ["grey", "yellow"]


def test_sessions_are_reproducible(bundle, tmp_path, new_images):
    twin = tmp_path / "twin"
    shutil.copytree(bundle, twin)
    learn(bundle, new_images, show_progress=False)
    learn(twin, new_images, show_progress=False)
    a, b = Bundle.open(bundle), Bundle.open(twin)
    assert a.manifest.heads["sha256"] == b.manifest.heads["sha256"]
    assert torch.equal(
        torch.randperm(10, generator=session_generator(0, 1)), torch.randperm(10, generator=session_generator(0, 1))
    )
    assert not torch.equal(
        torch.randperm(10, generator=session_generator(0, 1)), torch.randperm(10, generator=session_generator(0, 2))
    )
    assert load_method(a).num_classes == 5


@pytest.mark.parametrize("method", ["simplecil", "tosca-paper"])
def test_other_methods_run_through_the_same_services(tmp_path, base_images, new_images, method):
    path = tmp_path / method
    epochs = None if method == "simplecil" else 1  # simplecil trains nothing by epochs: --epochs would be refused
    train(
        base_images,
        path,
        backbone="test_efficientnet",
        random_init=True,
        method=method,
        epochs=epochs,
        show_progress=False,
    )
    learn(path, new_images, show_progress=False)
    assert Bundle.open(path).manifest.method["name"] == method
    predictions, _ = Classifier(path).classify(find_images([new_images]), show_progress=False)
    assert len(predictions) == 12


def test_a_class_list_that_disagrees_with_the_heads_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][1:]  # as a hand edit would: every later label would shift
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EdgeclError, match=r"manifest.json: lists 2 classes but the heads have 3; the bundle is damaged"
    ):
        Classifier(bundle, "torch")


def test_class_names_that_would_break_the_output_are_refused(bundle, new_images, tmp_path):
    for label in ("", "  ", "a\tb", "a\nb"):
        with pytest.raises(EdgeclError, match="label: .* is not a usable class name"):
            learn(bundle, new_images / "yellow", label=label, show_progress=False)
    with pytest.raises(EdgeclError, match="'unknown' is what edgecl answers"):
        learn(bundle, new_images / "yellow", label="unknown", show_progress=False)
    assert len(Bundle.open(bundle).manifest.sessions) == 1
