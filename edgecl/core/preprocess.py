"""timm's evaluation transform, re-implemented with PIL and numpy so the device needs no timm.

The config comes from `timm.data.resolve_data_config` on the host and is stored in the bundle;
`tests/test_preprocess.py` holds this equal to timm's own transform.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from edgecl.errors import EdgeclError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROP_MODES = ("center", "squash")
MIN_SIDE, MAX_SIDE = 14, 4096  # one ViT patch; past 4096 px a batch of two no longer fits a device


def _number(value: object, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r:.40} is not a number")
    if kind is int and value != int(value):
        raise ValueError(f"{value!r} is not a whole number")
    return kind(value)


@dataclass(frozen=True)
class PreprocessConfig:
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        channels, height, width = self.input_size
        if channels != 3 or not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
            raise EdgeclError(
                f"preprocess: input_size {list(self.input_size)} is not 3 x H x W "
                f"with H and W from {MIN_SIDE} to {MAX_SIDE}"
            )
        if (
            len(self.mean) != 3
            or len(self.std) != 3
            or not all(math.isfinite(v) for v in (*self.mean, *self.std))
            or min(self.std) <= 0
            or not 0 < self.crop_pct <= 2
        ):
            raise EdgeclError("preprocess: mean and std must be 3 finite numbers (std above 0) and crop_pct in (0, 2]")
        if self.interpolation not in _RESAMPLE:
            raise EdgeclError(f"preprocess: interpolation {self.interpolation!r} is not one of {sorted(_RESAMPLE)}")
        if self.crop_mode not in CROP_MODES:
            raise EdgeclError(f"preprocess: crop_mode {self.crop_mode!r} is not one of {CROP_MODES}")

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        try:
            return cls(
                input_size=tuple(_number(v, int) for v in data["input_size"]),
                interpolation=str(data["interpolation"]),
                mean=tuple(_number(v, float) for v in data["mean"]),
                std=tuple(_number(v, float) for v in data["std"]),
                crop_pct=_number(data.get("crop_pct") or 0.875, float),
                crop_mode=str(data.get("crop_mode") or "center"),
            )
        except (KeyError, TypeError, ValueError) as err:  # a hand-edited manifest: a string where a number goes
            raise EdgeclError(
                f"preprocess: {type(err).__name__} {err}; expected input_size, interpolation, mean, std as "
                "timm's data config writes them"
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)


def _resize_shorter_side(image: Image.Image, size: int, resample: int) -> Image.Image:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if new_size == image.size else image.resize(new_size, resample)


def _resize_keep_ratio(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    width, height = image.size
    ratio = min(height / size[0], width / size[1])
    return image.resize((round(width / ratio), round(height / ratio)), resample)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    pad_h, pad_w = max(height - pixels.shape[0], 0), max(width - pixels.shape[1], 0)
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    top = int(round((pixels.shape[0] - height) / 2.0))
    left = int(round((pixels.shape[1] - width) / 2.0))
    return pixels[top : top + height, left : left + width]


def preprocess(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """An RGB PIL image -> float32 CHW array, normalised, exactly as timm's eval transform."""
    _, height, width = config.input_size
    resample = _RESAMPLE[config.interpolation]
    scale = (math.floor(height / config.crop_pct), math.floor(width / config.crop_pct))
    if config.crop_mode == "squash":
        image = image.resize((scale[1], scale[0]), resample)
    elif scale[0] == scale[1]:
        image = _resize_shorter_side(image, scale[0], resample)
    else:
        image = _resize_keep_ratio(image, scale, resample)
    pixels = _center_crop(np.asarray(image, dtype=np.uint8), height, width)
    chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((chw - mean) / std)
