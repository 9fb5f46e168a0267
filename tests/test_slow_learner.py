"""SAFE's slow learner: the transfer loss, and tuning + merging a backbone on images (plumbing:
a tiny random-init CNN; accuracy is measured on real data in test_accuracy.py)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, PLUMBING_BACKBONE

from edgecl.core.images import scan_class_folders
from edgecl.core.methods.safe import SlowLearnerConfig
from edgecl.host.backbones import create_backbone, preprocess_config
from edgecl.host.slow_learner import train_slow_learner, transfer_loss, tuned_backbone


def test_transfer_loss_is_the_correlation_of_normalised_embeddings():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    c = torch.zeros(5, 5)
    for b in range(6):
        c += torch.outer(sn[b], tn[b]) / 6
    on = sum((c[i, i] - 1) ** 2 for i in range(5))
    off = sum(c[i, j] ** 2 for i in range(5) for j in range(5) if i != j)
    torch.testing.assert_close(transfer_loss(s, t, 0.01, 10.0), 0.01 * on + 10.0 * off)


def test_transfer_loss_stays_float32_under_mixed_precision():
    s, t = torch.randn(48, 320, generator=torch.Generator().manual_seed(0)), torch.randn(48, 320)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what CUDA training runs under (bfloat16 autocast)
        mixed = transfer_loss(s.bfloat16(), t.bfloat16(), 0.01, 10.0)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(
        mixed, transfer_loss(s.bfloat16().float(), t.bfloat16().float(), 0.01, 10.0), rtol=1e-6, atol=0
    )
    assert float(transfer_loss(s, t, 0.0, 0.0)) == 0.0


def session_zero(base_images):
    classes = scan_class_folders(base_images)
    return [p for c in classes for p in c.images], [i for i, c in enumerate(classes) for _ in c.images]


@pytest.mark.parametrize("device", DEVICES)
def test_slow_learner_tunes_and_merges_into_a_plain_backbone(base_images, device):
    model, _ = create_backbone(PLUMBING_BACKBONE, random_init=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths, labels = session_zero(base_images)
    config = SlowLearnerConfig(epochs=2, batch_size=8, lr=0.05)
    tuned, stats = train_slow_learner(
        model, paths, labels, preprocess_config(model), config, device=device, show_progress=False
    )
    assert stats["steps"] == 2 * 2 and stats["images"] == 18 and stats["trainable_parameters"] > 0
    assert stats["structure"] is None  # SSF merged: nothing stays in the graph
    state = tuned.state_dict()
    assert set(state) == set(before) and all(state[k].shape == before[k].shape for k in before)
    assert any(not torch.equal(state[k], before[k]) for k in before), "training changed no weight"
    assert not any(p.requires_grad for p in tuned.parameters()) and not tuned.training
    assert all(v.device.type == "cpu" for v in state.values())  # merged on the device, stored from the CPU


def test_tuned_backbone_is_cached(base_images, tmp_path):
    paths, labels = session_zero(base_images)
    config = SlowLearnerConfig(tuner="auto", epochs=1, batch_size=8)

    def tune():
        model, _ = create_backbone(PLUMBING_BACKBONE, random_init=True)
        return tuned_backbone(
            model,
            paths,
            labels,
            preprocess_config(model),
            config,
            base_sha256="x",
            cache_dir=tmp_path,
            show_progress=False,
        )

    first, stats = tune()
    again, cached = tune()
    assert "cached" not in stats and cached["cached"] and cached["steps"] == stats["steps"]
    # `auto` is the backbone's own tuner (SSF on this CNN), and shares its cache
    _, named = tuned_backbone(
        create_backbone(PLUMBING_BACKBONE, random_init=True)[0],
        paths,
        labels,
        preprocess_config(first),
        dataclasses.replace(config, tuner="ssf"),
        base_sha256="x",
        cache_dir=tmp_path,
        show_progress=False,
    )
    assert config.tuner == "auto" and named["cached"] and stats["tuner"] == "ssf"
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
