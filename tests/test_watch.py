import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from edgecl.errors import EdgeclError
from edgecl.runtime import watch
from edgecl.runtime.service import Classifier, learn
from edgecl.runtime.watch import watch_folder


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def labelled(path):
    """The log's predictions, without the error lines of a frame a busy machine caught mid-write."""
    return [line for line in read_log(path) if "label" in line]


def test_once_classifies_what_is_there_and_moves_it(bundle, base_images, tmp_path):
    inbox, done, log = tmp_path / "inbox", tmp_path / "done", tmp_path / "log" / "predictions.jsonl"
    shutil.copytree(base_images / "red", inbox)
    (inbox / "broken.png").write_bytes(b"\x89PNG not really")
    assert watch_folder(bundle, inbox, log, done=done, once=True, top_k=2) == 6
    lines = read_log(log)
    assert len(lines) == 7
    (error,) = [line for line in lines if "error" in line]
    assert error["path"] == str(inbox / "broken.png") and "broken.png" in error["error"]
    record = next(line for line in lines if "label" in line)
    assert set(record) >= {"time", "path", "label", "score", "top_k", "runtime"} and len(record["top_k"]) == 2
    assert sorted(p.name for p in done.iterdir()) == sorted(p.name for p in (base_images / "red").iterdir())
    assert [p.name for p in inbox.iterdir()] == ["broken.png"]  # stays, to be read again once it changes


def test_a_rewritten_file_is_classified_again_and_done_never_overwrites(bundle, base_images, tmp_path):
    inbox, done, log = tmp_path / "inbox", tmp_path / "done", tmp_path / "predictions.jsonl"
    inbox.mkdir()
    stop, counts = threading.Event(), []
    service = threading.Thread(
        target=lambda: counts.append(
            watch_folder(bundle, inbox, log, interval=0.05, settle=0.1, should_stop=stop.is_set)
        )
    )
    service.start()
    try:
        deadline = time.time() + 60
        for number, colour in enumerate(("red", "green", "blue"), 1):  # a camera rewriting latest.png
            shutil.copy(base_images / colour / "img_001.png", inbox / "latest.png")
            while len(labelled(log)) < number and time.time() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        service.join(60)
    assert [line["label"] for line in labelled(log)] == ["red", "green", "blue"] and counts == [3], read_log(log)

    for colour in ("red", "green"):  # with --done, two frames of the same name both survive
        shutil.copy(base_images / colour / "img_001.png", inbox / "latest.png")
        assert watch_folder(bundle, inbox, log, done=done, once=True) == 1
    assert sorted(p.name for p in done.iterdir()) == ["latest-1.png", "latest.png"]


def test_a_frame_caught_mid_write_is_read_again_and_only_a_lasting_failure_is_logged(bundle, base_images, tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "predictions.jsonl"
    inbox.mkdir()
    whole = (base_images / "red" / "img_001.png").read_bytes()

    def write(name, data):  # as a camera would, then aged past `settle`
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (time.time() - 5,) * 2)

    write("frame.png", whole[: len(whole) // 2])
    write("dead.png", whole[: len(whole) // 2])
    steps = iter([False, "finish the frame", False, False, True])

    def should_stop():
        step = next(steps)
        if step == "finish the frame":
            write("frame.png", whole)
            return False
        return step

    assert watch_folder(bundle, inbox, log, interval=0.01, settle=0.1, should_stop=should_stop) == 1
    lines = sorted(read_log(log), key=lambda line: line["path"])
    assert [(Path(line["path"]).name, line.get("label"), "error" in line) for line in lines] == [
        ("dead.png", None, True),  # logged once, after staying unreadable for a pass
        ("frame.png", "red", False),  # its first, half-written read left no error line
    ]


def test_a_pass_with_only_an_unreadable_image_logs_it_and_goes_on(bundle, base_images, tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "predictions.jsonl"
    inbox.mkdir()
    (inbox / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")  # a camera that died mid-write
    assert watch_folder(bundle, inbox, log, once=True) == 0
    (line,) = read_log(log)
    assert "truncated.jpg" in line["error"]
    shutil.copy(base_images / "red" / "img_000.png", inbox / "next.png")
    assert watch_folder(bundle, inbox, log, once=True) == 1
    assert [line["path"].rsplit("/", 1)[-1] for line in read_log(log) if "label" in line] == ["next.png"]


def test_service_picks_up_new_images_and_a_new_session(bundle, base_images, new_images, tmp_path):
    inbox, log = tmp_path / "inbox", tmp_path / "predictions.jsonl"
    inbox.mkdir()
    stop = threading.Event()
    counts = []
    service = threading.Thread(
        target=lambda: counts.append(
            watch_folder(bundle, inbox, log, interval=0.05, settle=0.1, should_stop=stop.is_set)
        )
    )
    service.start()
    try:
        shutil.copy(base_images / "green" / "img_000.png", inbox / "a.png")
        deadline = time.time() + 60
        while not labelled(log) and time.time() < deadline:
            time.sleep(0.05)
        assert labelled(log)[0]["classes"] == 3
        learn(bundle, new_images, show_progress=False)
        shutil.copy(new_images / "grey" / "img_000.png", inbox / "b.png")
        while len(labelled(log)) < 2 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        service.join(60)
    lines = labelled(log)
    assert [line["path"].rsplit("/", 1)[-1] for line in lines] == ["a.png", "b.png"]
    assert lines[1]["classes"] == 5  # reloaded after the learn
    assert counts == [2]


def test_a_learn_committed_while_the_service_loads_the_bundle_is_picked_up(
    bundle, base_images, new_images, tmp_path, monkeypatch
):
    inbox, log = tmp_path / "inbox", tmp_path / "predictions.jsonl"
    shutil.copytree(base_images / "red", inbox)
    loaded = []

    def load_then_a_learn_commits(path, runtime, **options):
        classifier = Classifier(path, runtime, **options)
        if not loaded:
            learn(bundle, new_images, show_progress=False)
        loaded.append(len(classifier.classes))
        return classifier

    monkeypatch.setattr(watch, "Classifier", load_then_a_learn_commits)
    passes = iter([False, True])
    watch_folder(bundle, inbox, log, interval=0, settle=0, should_stop=lambda: next(passes))
    assert loaded == [3, 5]
    assert {line["classes"] for line in labelled(log)} == {5}


def test_log_and_done_paths_are_checked_before_anything_is_classified(bundle, base_images, tmp_path):
    inbox = tmp_path / "inbox"
    shutil.copytree(base_images / "red", inbox)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(EdgeclError, match=r"^log .*: is a folder"):
        watch_folder(bundle, inbox, tmp_path, once=True)
    with pytest.raises(EdgeclError, match=r"^done .*a-file: exists and is not a folder"):
        watch_folder(bundle, inbox, tmp_path / "log.jsonl", done=tmp_path / "a-file", once=True)
    with pytest.raises(EdgeclError, match=r"^done .*inbox: is the watched folder"):
        watch_folder(bundle, inbox, tmp_path / "log.jsonl", done=tmp_path / "x" / ".." / "inbox", once=True)
    assert len(list(inbox.iterdir())) == 6 and not (tmp_path / "log.jsonl").exists()
