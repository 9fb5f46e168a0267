"""In-backbone tuners: SSF and LoRA merge exactly into a plain timm model, AdaptFormer stays in the graph."""

import numpy as np
import pytest
import torch
from conftest import requires_fashion_mnist
from PIL import Image

from edgecl.core.preprocess import preprocess
from edgecl.errors import EdgeclError
from edgecl.eval import fashion_mnist
from edgecl.host.backbones import create_backbone, create_model, preprocess_config, rebuild
from edgecl.host.tuners import create_tuner, tuner_for


def perturb(params, seed=0):
    """Move the tuned parameters away from their identity start, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def count(model):
    return sum(p.numel() for p in model.parameters())


def real_images(count_per_class=2):
    images, labels = fashion_mnist.load("test")
    picks = [int(i) for c in range(5) for i in np.flatnonzero(labels == c)[:count_per_class]]
    return [Image.fromarray(images[i]).convert("RGB") for i in picks]


@requires_fashion_mnist
def test_ssf_merges_exactly_into_the_pretrained_cnn_on_real_images():
    model, _ = create_backbone()  # tf_efficientnet_lite0, ImageNet weights
    original_count, original_keys = count(model), set(model.state_dict())
    batch = torch.from_numpy(np.stack([preprocess(im, preprocess_config(model)) for im in real_images()]))
    with torch.no_grad():
        pretrained = model(batch)
    tuner = create_tuner("ssf")
    perturb(tuner.attach(model))
    with torch.no_grad():
        tuned = model(batch)
        merged = tuner.merge(model)
        after = merged(batch)
    assert (tuned - pretrained).abs().max() > 0.1  # the tuning changed the embedding
    assert (after - tuned).abs().max() <= 1e-4
    assert count(merged) == original_count and set(merged.state_dict()) == original_keys
    plain = create_model("tf_efficientnet_lite0")  # the merged weights load into an untouched timm model
    plain.load_state_dict(merged.state_dict())
    with torch.no_grad():
        assert (plain(batch) - tuned).abs().max() <= 1e-4


def test_ssf_merges_exactly_into_a_vit():
    model, _ = create_backbone("test_vit", random_init=True)
    before = count(model)
    tuner = create_tuner("ssf")
    params = tuner.attach(model)
    assert sum(p.numel() for p in params) > 0 and not tuner.structure()
    perturb(params)
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        tuned = model(x)
        merged = tuner.merge(model)
        assert (merged(x) - tuned).abs().max() <= 1e-4
    assert count(merged) == before
    assert not any(p.requires_grad for p in merged.parameters())


def test_adaptformer_starts_as_the_identity_and_stays_in_the_graph():
    model, _ = create_backbone("test_vit", random_init=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        plain = model(x)
    tuner = create_tuner("adaptformer")
    params = tuner.attach(model)
    blocks = len(model.blocks)
    assert sum(p.numel() for p in params) == blocks * (2 * 64 * model.num_features + 64 + model.num_features)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain)  # up-projection starts at zero
        perturb(params)
        tuned = model(x)
    assert (tuned - plain).abs().max() > 1e-3
    merged = tuner.merge(model)
    spec = {"name": "test_vit", "tuner": tuner.structure()}
    restored = rebuild(spec, merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), tuned, rtol=0, atol=1e-6)


def test_adaptformer_needs_a_vit():
    model, _ = create_backbone("test_efficientnet", random_init=True)
    with pytest.raises(EdgeclError, match="ViT-style"):
        create_tuner("adaptformer").attach(model)
    with pytest.raises(EdgeclError, match="unknown tuner"):
        create_tuner("dora")


def lora_after_training(model, layers):
    """A LoRA tuner attached to `model` with its B moved off zero, as training would."""
    tuner = create_tuner("lora", rank=4, layers=layers)
    params = tuner.attach(model)
    assert all(p.shape[1] == 4 for p in params)
    perturb(params)
    return tuner, params


def test_auto_is_adaptformer_on_a_vit_and_ssf_on_a_cnn():
    vit, _ = create_backbone("test_vit", random_init=True)
    cnn, _ = create_backbone("test_efficientnet", random_init=True)
    assert (tuner_for("auto", vit), tuner_for("auto", cnn)) == ("adaptformer", "ssf")
    assert (tuner_for("ssf", vit), tuner_for("adaptformer", cnn)) == ("ssf", "adaptformer")  # a name is kept
    create_tuner(tuner_for("auto", vit)).attach(vit)


@requires_fashion_mnist
def test_lora_merges_exactly_into_the_pretrained_cnn_on_real_images():
    model, _ = create_backbone()
    original_count, original_keys = count(model), set(model.state_dict())
    batch = torch.from_numpy(np.stack([preprocess(im, preprocess_config(model)) for im in real_images()]))
    with torch.no_grad():
        pretrained = model(batch)
    tuner, params = lora_after_training(model, "auto")
    assert len(params) == 32  # every 1x1 convolution of EfficientNet-Lite0
    with torch.no_grad():
        tuned = model(batch)
        merged = tuner.merge(model)
        after = merged(batch)
    assert (tuned - pretrained).abs().max() > 0.01
    assert (after - tuned).abs().max() <= 1e-4
    assert count(merged) == original_count and set(merged.state_dict()) == original_keys
    assert not any(p.requires_grad for p in merged.parameters())


def test_lora_on_a_vit_changes_only_key_and_value_and_merges():
    model, _ = create_backbone("test_vit", random_init=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 160, 160)
    tuner, params = lora_after_training(model, "kv")
    assert len(params) == len(model.blocks) and params[0].shape[0] == 2 * model.num_features
    with torch.no_grad():
        tuned = model(x)
        merged = tuner.merge(model)
        torch.testing.assert_close(merged(x), tuned, rtol=0, atol=1e-4)
    dim = model.num_features
    for key, value in merged.state_dict().items():
        if key.endswith("attn.qkv.weight"):
            torch.testing.assert_close(value[:dim], before[key][:dim], rtol=0, atol=0)  # queries untouched
            assert (value[dim:] - before[key][dim:]).abs().max() > 0
        else:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_lora_starts_as_the_identity_with_a_fixed_down_projection():
    model, _ = create_backbone("test_efficientnet", random_init=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
    tuner = create_tuner("lora", rank=3, layers="conv1x1")
    params = tuner.attach(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain)
    downs = [branch.down for _, branch in tuner.branches.values()]
    assert not any(d.requires_grad for d in downs) and all(id(d) not in map(id, params) for d in downs)
    with pytest.raises(EdgeclError, match="unknown layer set"):
        create_tuner("lora", layers="mlp").attach(create_backbone("test_efficientnet", random_init=True)[0])
    with pytest.raises(EdgeclError, match="has no such layers"):
        create_tuner("lora", layers="kv").attach(create_backbone("test_efficientnet", random_init=True)[0])
