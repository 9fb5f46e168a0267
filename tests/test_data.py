"""The train/test sets `edgecl eval` reads: folders or list files, excluded classes, incomplete splits."""

import shutil

import pytest
from conftest import make_image_folder

from edgecl.errors import EdgeclError
from edgecl.eval.datasets import load_train_test


@pytest.fixture
def folders(tmp_path):
    make_image_folder(tmp_path / "train", ["red", "green", "blue"], count=2)
    make_image_folder(tmp_path / "test", ["red", "green", "blue"], count=1, seed=9)
    return tmp_path


def test_excluded_classes_leave_both_splits(folders):
    data = load_train_test(folders, exclude=["green"])
    assert sorted(data.classes) == ["blue", "red"] and len(data.train.paths) == 4 and len(data.test.paths) == 2


def test_an_excluded_class_that_is_not_there_is_an_error(folders):
    with pytest.raises(EdgeclError, match=r"^exclude Green: .* has no class of that name"):
        load_train_test(folders, exclude=["Green"])


def test_a_class_without_test_images_is_an_error(folders):
    shutil.rmtree(folders / "test" / "blue")
    with pytest.raises(EdgeclError, match="classes without test images: blue"):
        load_train_test(folders)


def test_lists_with_an_excluded_class(folders):
    images = sorted(
        p.relative_to(folders / "train").as_posix() for p in (folders / "train").rglob("*.png")
    )  # two per class
    (folders / "train.txt").write_text("\n".join(images[0::2]) + "\n")
    (folders / "test.txt").write_text("\n".join(images[1::2]) + "\n")
    data = load_train_test(folders / "train", folders / "train.txt", folders / "test.txt", exclude=["blue"])
    assert data.classes == ["green", "red"] and len(data.train.paths) == len(data.test.paths) == 2
    with pytest.raises(EdgeclError, match="^exclude purple"):
        load_train_test(folders / "train", folders / "train.txt", folders / "test.txt", exclude=["purple"])
