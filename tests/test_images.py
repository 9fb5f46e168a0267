"""Decoding images the way a device's cameras write them."""

import struct
import tracemalloc

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


def write_rgb16_tiff(path, pixels: np.ndarray) -> None:
    """A 48-bit RGB TIFF, uncompressed, by hand: PIL cannot write one, industrial cameras do."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags = {256: width, 257: height, 258: 0, 259: 1, 262: 2, 273: 0, 277: 3, 278: height, 279: len(data), 284: 1}
    bits_at = 8 + 2 + 12 * len(tags) + 4  # 258 (three bits-per-sample shorts) and 273 (pixels) follow the directory
    tags[258], tags[273] = bits_at, bits_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, value in tags.items():  # a little-endian short in a 4-byte field reads as the same number packed as long
        out += struct.pack("<HHII", tag, 4 if tag in (273, 279) else 3, 3 if tag == 258 else 1, value)
    out += struct.pack("<IHHH", 0, 16, 16, 16) + data
    path.write_bytes(bytes(out))


def test_tiff_eight_and_sixteen_bit_grey_and_colour(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb8.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgb8.tif")), rgb)
    ramp = np.linspace(0, 65535, 24 * 32).astype(np.uint16).reshape(24, 32)
    Image.fromarray(ramp).save(tmp_path / "mono16.tiff")
    Image.fromarray(ramp.byteswap().view(">u2")).save(tmp_path / "mono16be.tif")  # a big-endian camera's file
    for name in ("mono16.tiff", "mono16be.tif"):
        assert Image.open(tmp_path / name).mode.startswith("I;16")
        grey = np.asarray(load_image(tmp_path / name))
        np.testing.assert_array_equal(grey, np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2))
    colour = np.zeros((4, 5, 3), np.uint16)
    colour[...] = (65535, 32768, 300)
    write_rgb16_tiff(tmp_path / "rgb16.tif", colour)
    assert load_image(tmp_path / "rgb16.tif").getpixel((0, 0)) == (255, 128, 1)  # the top 8 bits, not clipped white


def test_the_first_page_of_a_tiff_and_the_first_frame_of_a_gif(tmp_path):
    frames = [Image.new("RGB", (16, 12), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    for name in ("pages.tif", "moving.gif"):
        assert Image.open(tmp_path / name).n_frames == 3
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (16, 12)
        assert np.abs(np.asarray(image).astype(int) - (200, 30, 30)).max() <= 8  # GIF's palette may round a little
    still = Image.new("P", (8, 8))
    still.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    still.save(tmp_path / "clear.gif", transparency=0)
    assert load_image(tmp_path / "clear.gif").getpixel((0, 0)) == (255, 0, 0)  # transparency dropped, as for PNG


def test_sixteen_bit_conversion_makes_no_wide_copy(tmp_path):
    ramp = (np.arange(1024 * 1024, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1024, 1024)
    Image.fromarray(ramp).save(tmp_path / "big16.png")
    tracemalloc.start()
    try:
        image = load_image(tmp_path / "big16.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.getpixel((300, 0)) == (1, 1, 1)
    assert peak < 6 * ramp.size, f"{peak / ramp.size:.1f} bytes a pixel"  # an int64 copy alone is 8


def test_a_decompression_bomb_is_unreadable_in_one_line(tmp_path, monkeypatch):
    import edgecl.api  # noqa: F401  nothing edgecl imports may lift PIL's limit
    import edgecl.cli.app  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels is over twice the limit: refused
    with pytest.raises(UnreadableImage) as caught:
        load_image(tmp_path / "bomb.png")
    assert str(caught.value).startswith(f"{tmp_path / 'bomb.png'}: ") and "decompression bomb" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_image_past_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (30, 20)).save(tmp_path / "wide.png")
    monkeypatch.setenv("EDGECL_MAX_IMAGE_PIXELS", "500")
    with pytest.raises(UnreadableImage, match="30 x 20 pixels, more than the 500 edgecl decodes"):
        load_image(tmp_path / "wide.png")
    monkeypatch.setenv("EDGECL_MAX_IMAGE_PIXELS", "600")
    assert load_image(tmp_path / "wide.png").size == (30, 20)
