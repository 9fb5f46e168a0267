"""Every command finds the same images in the same folder: symlinked class folders and files, a loop,
a dangling link, TIFF and GIF files (issue 27)."""

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import PLUMBING_BACKBONE
from PIL import Image
from test_cli import edgecl, one_line_error

from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images, list_images, scan_class_folders, scan_new_classes
from edgecl.errors import EdgeclError
from edgecl.eval.datasets import load_train_test

CLASSES = ["bag", "boot", "shirt"]  # none of them in the `bundle` fixture (red, green, blue)


def _save(path: Path, colour, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(path.name)).integers(-20, 20, (40, 48, 3))
    frame = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
    if kwargs.pop("sixteen_bit", False):
        frame = Image.fromarray(np.asarray(frame.convert("L")).astype(np.uint16) * 257)
    frame.save(path, **kwargs)


def linked_tree(root: Path) -> tuple[Path, dict[str, list[str]]]:
    """root/data, a data set assembled with links, and the images each class must have (relative to root/data)."""
    store, data = root / "store", root / "data"
    for name in ("b0.png", "b1.jpg"):
        _save(store / "c17" / name, (200, 60, 40))
    _save(store / "shared.png", (40, 40, 200))
    (store / "c17" / "again").symlink_to("../c17")  # a loop: the class folder inside itself
    data.mkdir()
    (data / "bag").symlink_to("../store/c17")  # a class folder linked from the shared store
    shirt = data / "shirt"
    _save(shirt / "s0.tif", (40, 200, 60))
    _save(shirt / "s1.tif", (40, 200, 60), sixteen_bit=True)  # a thermal camera's 16-bit grey frame
    first = Image.new("RGB", (48, 40), (40, 200, 60))
    first.save(shirt / "s2.tiff", save_all=True, append_images=[Image.new("RGB", (48, 40), "white")])  # two pages
    first.save(shirt / "s3.gif", save_all=True, append_images=[Image.new("RGB", (48, 40), "black")], duration=40)
    (shirt / "shared.png").symlink_to("../../store/shared.png")  # a linked file
    (shirt / "gone.png").symlink_to("../../store/missing.png")  # dangling
    (shirt / "notes.txt").write_text("not an image")
    _save(data / "boot" / "k0.png", (230, 220, 40))
    _save(data / "boot" / "day" / "k1.webp", (230, 220, 40))  # a subfolder of a class folder
    _save(data / "boot" / ".thumb.png", (0, 0, 0))  # hidden: never an image
    (data / "boot" / "zz-same.png").symlink_to("k0.png")  # the same file again: counted once
    expected = {
        "bag": ["bag/b0.png", "bag/b1.jpg"],
        "boot": ["boot/day/k1.webp", "boot/k0.png"],
        "shirt": ["shirt/s0.tif", "shirt/s1.tif", "shirt/s2.tiff", "shirt/s3.gif", "shirt/shared.png"],
    }
    return data, expected


def _warnings(text: str, data: Path) -> None:
    """The three things passed over, each named."""
    assert f"warning: 1 dangling link(s) skipped: {data}/shirt/gone.png -> ../../store/missing.png" in text, text
    assert f"warning: 1 symlink loop(s) not followed: {data}/bag/again (back to {data}/bag)" in text, text
    assert f"(the same file as {data}/boot/k0.png)" in text and f"{data}/boot/zz-same.png" in text, text


@pytest.fixture
def decoded(monkeypatch):
    """The paths of the images each command decoded, and the check that every one came out RGB."""
    import edgecl.core.embedding as embedding

    paths, real = [], embedding.to_rgb

    def spy(image):
        rgb = real(image)
        assert rgb.mode == "RGB" and rgb.size == (48, 40)
        paths.append(str(image))
        return rgb

    monkeypatch.setattr(embedding, "to_rgb", spy)
    return paths


@pytest.fixture
def messages():
    """What edgecl.core.images logged, whether or not the CLI's handler stops it propagating."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("edgecl.core.images")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_every_command_finds_the_same_images(tmp_path, bundle, decoded):
    data, expected = linked_tree(tmp_path)
    every = [str(data / p) for name in CLASSES for p in expected[name]]

    result = edgecl("classify", data, "--bundle", bundle, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert [r["path"] for r in json.loads(result.stdout)] == every  # the case: a symlinked folder, classified
    _warnings(result.stderr, data)
    assert sorted(decoded) == sorted(every)

    decoded.clear()
    result = edgecl(
        "train",
        data,
        "--out",
        tmp_path / "trained",
        "--backbone",
        PLUMBING_BACKBONE,
        "--random-init",
        "--method",
        "tosca",
        "--epochs",
        "1",
        "--set",
        "min_steps=0",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    _warnings(result.stderr, data)
    assert sorted(decoded) == sorted(every)
    m = Bundle.open(tmp_path / "trained").manifest
    assert m.class_names == CLASSES and m.sessions[0].images == len(every)

    decoded.clear()
    result = edgecl("val", data, "--bundle", tmp_path / "trained", "--json", tmp_path / "val.json", "-q")
    assert result.exit_code == 0, result.stderr
    _warnings(result.stderr, data)
    assert sorted(decoded) == sorted(every)

    decoded.clear()
    result = edgecl("learn", "--images", data, "--bundle", bundle, "-q")
    assert result.exit_code == 0, result.stderr
    _warnings(result.stderr, data)
    assert sorted(decoded) == sorted(every)
    m = Bundle.open(bundle).manifest
    assert m.class_names[-3:] == CLASSES and m.sessions[-1].images == len(every)

    shirt = [str(data / p) for p in expected["shirt"]]
    decoded.clear()
    result = edgecl("watch", data / "shirt", "--log", tmp_path / "log.jsonl", "--once", "--bundle", bundle)
    assert result.exit_code == 0, result.stderr
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["path"] for line in logged] == shirt and all("label" in line for line in logged)
    result = edgecl("classify", data / "shirt", "--bundle", bundle, "-q")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == shirt
    assert sorted(decoded) == sorted(shirt + shirt)


def test_learn_names_a_linked_class_folder_as_linked(tmp_path, bundle):
    data, expected = linked_tree(tmp_path)
    result = edgecl("learn", "--images", data / "bag", "--bundle", bundle, "-q", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == ["bag"]  # not c17, its target's name: as train names it
    assert Bundle.open(bundle).manifest.sessions[-1].images == len(expected["bag"])
    assert "symlink loop(s) not followed" in result.stderr


def test_the_library_finds_what_the_commands_find(tmp_path, messages):
    data, expected = linked_tree(tmp_path)
    every = [data / p for name in CLASSES for p in expected[name]]
    assert find_images([data]) == every
    classes = scan_class_folders(data)
    assert [(c.name, list(c.images)) for c in classes] == [(n, [data / p for p in expected[n]]) for n in CLASSES]
    assert scan_new_classes(data) == classes
    assert [list(c.images) for c in scan_new_classes(data / "shirt")] == [[data / p for p in expected["shirt"]]]
    assert list_images(data / "boot") == [data / "boot" / "k0.png"]  # only what is directly inside
    assert len(messages) == 3 + 3 + 3 + 1 + 1, messages  # each search names what it passed over
    assert messages[0] == f"1 dangling link(s) skipped: {data}/shirt/gone.png -> ../../store/missing.png"
    assert list_images(data / "shirt", warn=False) == [data / p for p in expected["shirt"]] and len(messages) == 11


def test_eval_reads_linked_splits_as_the_commands_do(tmp_path):
    data, expected = linked_tree(tmp_path)
    root = tmp_path / "eval"
    root.mkdir()
    (root / "train").symlink_to(data)
    (root / "test").symlink_to(data)
    sets = load_train_test(root)
    assert sets.classes == CLASSES
    every = [root / "train" / p for n in CLASSES for p in expected[n]]
    assert sets.train.paths == find_images([root / "train"]) == every
    assert sets.test.paths == find_images([root / "test"])
    assert sets.train.labels.tolist() == [i for i, n in enumerate(CLASSES) for _ in expected[n]]

    lists = {
        "train.txt": ["bag/b0.png", "shirt/s3.gif", "boot/k0.png"],
        "test.txt": ["bag/b1.jpg", "shirt/s1.tif", "boot/day/k1.webp"],
    }
    for name, lines in lists.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    sets = load_train_test(data, tmp_path / "train.txt", tmp_path / "test.txt")
    assert sets.train.paths == [data / p for p in ("bag/b0.png", "boot/k0.png", "shirt/s3.gif")]
    for wrong, message in (("shirt/notes.txt", "1 listed file(s) not images (jpg, "), ("shirt/gone.png", "not under")):
        (tmp_path / "bad.txt").write_text(f"bag/b1.jpg\n{wrong}\n")
        with pytest.raises(EdgeclError, match=re.escape(message)):
            load_train_test(data, tmp_path / "train.txt", tmp_path / "bad.txt")


def test_the_eval_command_reads_linked_splits(tmp_path, decoded):
    data, expected = linked_tree(tmp_path)
    root = tmp_path / "eval"
    root.mkdir()
    (root / "train").symlink_to(data)
    (root / "test").symlink_to(linked_tree(tmp_path / "again")[0])  # other files: the same ones come from the cache
    result = edgecl(
        "eval", root, "--init", "2", "--increment", "1", "--backbone", PLUMBING_BACKBONE, "--random-init",
        "--method", "simplecil", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for part in ("train", "test"):
        _warnings(result.stderr, root / part)
        assert sorted(p for p in decoded if p.startswith(f"{root / part}/")) == sorted(
            str(root / part / p) for name in CLASSES for p in expected[name]
        )


def test_links_that_cannot_be_followed(tmp_path, bundle, messages):
    data, _ = linked_tree(tmp_path)
    (data / "shirt" / "ping").symlink_to("pong")
    (data / "shirt" / "pong").symlink_to("ping")
    assert len(find_images([data / "shirt"])) == 5
    assert (
        messages[-1] == f"2 symlink loop(s) not followed: {data}/shirt/ping (a chain of links that never ends), "
        f"{data}/shirt/pong (a chain of links that never ends)"
    )
    one_line_error(edgecl("classify", data / "shirt" / "gone.png", "--bundle", bundle), "gone.png: a dangling link (to")
    one_line_error(edgecl("classify", data / "shirt" / "ping", "--bundle", bundle), "ping: a symlink loop")
    (data / "self").symlink_to(".")  # a loop where a class folder would be: passed over, as classify passes it
    assert [c.name for c in scan_class_folders(data)] == CLASSES
    loops = f"symlink loop(s) not followed: {data}/bag/again (back to {data}/bag), {data}/self (back to {data})"
    assert loops in messages[-2], messages
    assert [c.name for c in scan_new_classes(data)] == CLASSES
    (data / "self").unlink()
    (data / "pack").symlink_to("bag")  # two classes of one folder
    with pytest.raises(EdgeclError, match=f"{data}/pack: leads to {data}/bag, which is searched already"):
        scan_class_folders(data)
    (data / "pack").unlink()
    (data / "shirt" / "s1.tif").unlink()
    (data / "shirt" / "s1.tif").symlink_to("../boot/k0.png")  # one file in two classes: the first keeps it
    classes = scan_class_folders(data)
    assert [len(c.images) for c in classes] == [2, 2, 4]
    assert f"{data}/shirt/s1.tif (the same file as {data}/boot/k0.png)" in messages[-1]


def test_a_named_file_reached_twice_is_one_image(tmp_path, messages):
    data, _ = linked_tree(tmp_path)
    image = data / "boot" / "k0.png"
    assert find_images([image, data / "boot", image]) == [image, data / "boot" / "day" / "k1.webp"]
    assert messages == [
        f"1 path(s) reaching files found already, counted once: {data}/boot/zz-same.png (the same file as {image})"
    ]  # naming a file twice is not worth a warning
    assert find_images([os.path.relpath(image)]) == [Path(os.path.relpath(image))]  # paths stay as given
