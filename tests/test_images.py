"""Decoding images the way a device's cameras write them."""

import numpy as np
import pytest
from PIL import Image

from edgecl.core.images import UnreadableImage, find_images, load_image


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "mono16.png")
    assert Image.open(tmp_path / "mono16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "mono16.png"))
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (80, 40), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    image.save(tmp_path / "sideways.jpg", exif=exif)
    assert load_image(tmp_path / "sideways.jpg").size == (40, 80)


def test_a_truncated_file_is_unreadable_and_named(tmp_path):
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "frame.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "frame.png").read_bytes()[:60])
    with pytest.raises(UnreadableImage, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_an_image_named_twice_is_found_once(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    assert find_images([tmp_path / "b.png", tmp_path, tmp_path / "b.png"]) == [tmp_path / "b.png", tmp_path / "a.png"]
