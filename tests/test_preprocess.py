import numpy as np
import pytest
import timm
import torch
from PIL import Image

from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.errors import EdgeclError
from edgecl.host.backbones import preprocess_config

SIZES = [(300, 200), (200, 300), (28, 28), (256, 256), (640, 97), (224, 224)]


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # EfficientNet-Lite
        PreprocessConfig(interpolation="bilinear", crop_pct=0.9),
        PreprocessConfig(input_size=(3, 160, 160), crop_pct=0.95),
        PreprocessConfig(input_size=(3, 224, 192), crop_pct=0.875),
        PreprocessConfig(crop_mode="squash", crop_pct=1.0),
    ],
    ids=["lite0", "bilinear", "160px", "non-square", "squash"],
)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_equals_timm_eval_transform(config, size):
    transform = timm.data.create_transform(**{k: v for k, v in config.to_dict().items()}, is_training=False)
    image = random_image(*size)
    ours = preprocess(image, config)
    theirs = transform(image).numpy()
    assert ours.shape == theirs.shape == config.input_size
    np.testing.assert_array_equal(ours, theirs)


def test_config_from_timm_model_round_trips():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    config = preprocess_config(model)
    assert config.mean == (0.5, 0.5, 0.5) and config.interpolation == "bicubic"
    assert PreprocessConfig.from_dict(config.to_dict()) == config


def test_grey_image_becomes_three_equal_channels():
    config = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    grey = Image.fromarray(np.full((28, 28), 77, dtype=np.uint8)).convert("RGB")
    out = preprocess(grey, config)
    assert np.allclose(out[0], out[1]) and np.allclose(out[1], out[2])
    assert torch.isclose(torch.tensor(out[0, 0, 0]), torch.tensor((77 / 255 - 0.5) / 0.5))


def test_unknown_modes_are_refused():
    with pytest.raises(EdgeclError, match="crop_mode"):
        PreprocessConfig(crop_mode="border")
    with pytest.raises(EdgeclError, match="interpolation"):
        PreprocessConfig(interpolation="cubic-ish")
