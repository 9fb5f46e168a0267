import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from edgecl.core import bundle as bundles
from edgecl.core import files as file_primitives
from edgecl.core.bundle import FORMAT_VERSION, Bundle
from edgecl.core.session import load_method
from edgecl.errors import EdgeclError
from edgecl.runtime.service import Classifier, learn


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}


def referenced_snapshot(path: Path) -> dict[str, bytes]:
    """The manifest and the files it names: what a reader of the bundle sees."""
    m = Bundle.open(path).manifest
    return {name: (path / name).read_bytes() for name in ("manifest.json", m.heads["file"], m.backbone["file"])}


def test_round_trip_manifest_and_tensors(bundle, base_images):
    b = Bundle.open(bundle)
    m = b.manifest
    assert m.format == "edgecl-bundle" and m.version == FORMAT_VERSION
    assert m.class_names == ["blue", "green", "red"]
    assert [c.session for c in m.classes] == [0, 0, 0]
    assert m.backbone["sha256"] == bundles.sha256_bytes((bundle / m.backbone["file"]).read_bytes())
    assert m.preprocess["input_size"] == [3, 160, 160]
    assert m.method["name"] == "tosca" and m.method["config"]["bottleneck"] == 48
    assert m.sessions[0].images == 18 and m.sessions[0].seed == 0
    method = load_method(b)
    assert method.num_classes == 3
    again = Bundle.open(bundle)
    assert again.manifest == m


def test_only_json_and_safetensors_no_pickle(bundle):
    suffixes = {p.suffix for p in bundle.iterdir() if not p.name.startswith(".")}
    assert suffixes <= {".json", ".safetensors"}


def test_refuses_newer_and_unknown_formats(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "version": FORMAT_VERSION + 1}))
    with pytest.raises(EdgeclError, match="newer than this edgecl"):
        Bundle.open(bundle)
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(EdgeclError, match="not an edgecl bundle"):
        Bundle.open(bundle)
    (bundle / "manifest.json").write_text("{broken")
    with pytest.raises(EdgeclError, match="not valid JSON"):
        Bundle.open(bundle)


def test_a_malformed_class_entry_is_a_one_line_error(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["classes"][0] = {"name": "red"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeclError, match=r"manifest.json: a malformed class or session entry \(.*session"):
        Bundle.open(bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(heads=None), r"heads.file = None is not of type str; the bundle is damaged"),
        (
            lambda m: m["backbone"].update(embedding_dim="abc"),
            r"backbone.embedding_dim = 'abc' is not of type int; the bundle is damaged",
        ),
        (
            lambda m: m["method"].update(name="nope"),
            r"method 'nope' is not one edgecl .* knows \(.*tosca.*\); a newer edgecl wrote it",
        ),
        (lambda m: m["preprocess"].update(interpolation="foo"), r"preprocess: interpolation 'foo' is not one of"),
    ],
)
def test_a_hand_edited_manifest_is_named_in_one_line(bundle, edit, message):
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeclError, match=message):
        Classifier(bundle)


def test_missing_and_non_bundles(tmp_path):
    with pytest.raises(EdgeclError, match="no such bundle"):
        Bundle.open(tmp_path / "nope")
    with pytest.raises(EdgeclError, match="not an edgecl bundle"):
        Bundle.open(tmp_path)


def test_tampered_tensors_are_detected(bundle):
    b = Bundle.open(bundle)
    heads = bundle / b.manifest.heads["file"]
    data = bytearray(heads.read_bytes())
    data[-1] ^= 0xFF
    heads.write_bytes(bytes(data))
    with pytest.raises(EdgeclError, match="checksum mismatch"):
        load_method(Bundle.open(bundle))


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgecl.core.bundle_files import BundleFiles
    from edgecl.runtime.service import learn

    where = sys.argv[3]
    real_write = BundleFiles.write

    def write_then_die(self, name, data, **kwargs):
        if where == "heads" and name.startswith(("heads-", "journal-")):
            (self.root / f".{name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        if where == "manifest" and name == "manifest.json":
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, name, data, **kwargs)

    BundleFiles.write = write_then_die
    learn(Path(sys.argv[1]), Path(sys.argv[2]), show_progress=False)
    """
)


@pytest.mark.parametrize("where", ["heads", "manifest"])
def test_killed_learner_leaves_the_previous_bundle_intact(bundle, new_images, base_images, where):
    before = referenced_snapshot(bundle)
    probe = sorted((base_images / "red").iterdir())[:3]
    expected, _ = Classifier(bundle).classify(probe, show_progress=False)
    done = subprocess.run(
        [sys.executable, "-c", KILLER, str(bundle), str(new_images), where], capture_output=True, text=True
    )
    assert done.returncode == -9, done.stderr  # SIGKILL, mid-write
    assert referenced_snapshot(bundle) == before
    after, _ = Classifier(bundle).classify(probe, show_progress=False)
    assert [(p.label, p.score) for p in after] == [(p.label, p.score) for p in expected]
    # the next learner succeeds and removes what the killed one left behind
    learn(bundle, new_images, show_progress=False)
    m = Bundle.open(bundle).manifest
    assert m.class_names[-2:] == ["grey", "yellow"]
    leftovers = [p.name for p in bundle.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert sorted(p.name for p in bundle.glob("heads-*")) == [m.heads["file"]]


def test_a_file_the_manifest_names_is_never_overwritten_before_the_commit(bundle):
    with bundles.update(bundle) as change:
        change.manifest.export = change.write_file(bundles.ONNX_FILE, b"first export")
    assert (bundle / "backbone.onnx").read_bytes() == b"first export"
    with pytest.raises(KeyboardInterrupt), bundles.update(bundle) as change:
        entry = change.write_file(bundles.ONNX_FILE, b"second export, another toolchain")
        assert entry["file"] == f"backbone-{entry['sha256'][:16]}.onnx"
        raise KeyboardInterrupt  # killed before the commit
    b = Bundle.open(bundle)
    assert b.read_bytes(b.manifest.export) == b"first export"
    assert not list(bundle.glob("backbone-*.onnx"))
    with bundles.update(bundle) as change:
        change.manifest.export = change.write_file(bundles.ONNX_FILE, b"second export, another toolchain")
    b = Bundle.open(bundle)
    assert b.read_bytes(b.manifest.export) == b"second export, another toolchain"
    assert not (bundle / "backbone.onnx").exists()  # the old file goes with the commit
    with bundles.update(bundle) as change:  # same bytes again: the same file, nothing renamed
        assert change.write_file(b.manifest.export["file"], b"second export, another toolchain") == b.manifest.export
    (bundle / "heads.onnx").write_bytes(b"renamed in by an export killed before its commit")
    with bundles.update(bundle):
        pass
    assert not (bundle / "heads.onnx").exists() and (bundle / b.manifest.export["file"]).exists()


def test_ctrl_c_while_the_committed_manifest_is_synced_keeps_the_change_whole(bundle, new_images, monkeypatch):
    from edgecl.core import bundle_files

    real_write, real_fsync = bundle_files.BundleFiles.write, bundle_files.os.fsync

    def write(self, name, data, replaced=None):
        if name != bundles.MANIFEST:
            return real_write(self, name, data, replaced)
        calls = []

        def fsync(fd):
            real_fsync(fd)
            calls.append(fd)
            if len(calls) == 2:  # the folder's, after the new manifest was renamed into place
                raise KeyboardInterrupt

        monkeypatch.setattr(bundle_files.os, "fsync", fsync)
        try:
            real_write(self, name, data, replaced)
        finally:
            monkeypatch.setattr(bundle_files.os, "fsync", real_fsync)

    monkeypatch.setattr(bundle_files.BundleFiles, "write", write)
    learn(bundle, new_images / "grey", show_progress=False)  # the change is made: the interrupt comes too late
    monkeypatch.undo()
    b = Bundle.open(bundle)
    assert b.manifest.class_names[-1] == "grey"
    load_method(b)  # every file the committed manifest names is there
    Classifier(bundle).classify(sorted((new_images / "grey").iterdir()), show_progress=False)


def test_second_learner_times_out_with_a_clear_message(bundle, new_images):
    before = snapshot(bundle)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with bundles.locked(bundle, timeout=1):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(EdgeclError, match=r"another edgecl process \(pid \d+\) is updating this bundle"):
            learn(bundle, new_images, lock_timeout=0.2, show_progress=False)
    finally:
        release.set()
        holder.join()
    assert snapshot(bundle) == before


def test_train_force_waits_for_a_writer_and_a_waiting_writer_locks_the_new_bundle(bundle, tmp_path, monkeypatch):
    import fcntl
    import os

    old = Bundle.open(bundle)
    files = {name: (bundle / name).read_bytes() for name in bundles.referenced(old.manifest)}
    holding, release, waiter_holds = threading.Event(), threading.Event(), []

    def hold() -> None:
        with bundles.locked(bundle, timeout=1):
            holding.set()
            release.wait(30)

    def wait_then_hold() -> None:
        with bundles.locked(bundle, timeout=30):
            fd = os.open(bundle / ".lock", os.O_RDWR)
            try:  # the lock held is the one at the path now, not the replaced bundle's
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                waiter_holds.append(False)
            except BlockingIOError:
                waiter_holds.append(True)
            finally:
                os.close(fd)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    checks, waiting = [], threading.Event()
    real_same_file, real_open_lock = file_primitives._same_file, file_primitives._open_lock
    monkeypatch.setattr(
        file_primitives, "_same_file", lambda fd, path: checks.append(real_same_file(fd, path)) or checks[-1]
    )
    monkeypatch.setattr(file_primitives, "_open_lock", lambda path: (real_open_lock(path), waiting.set())[0])
    try:
        with pytest.raises(EdgeclError, match="another edgecl process"):
            bundles.create(bundle, old.manifest, files, force=True, lock_timeout=0.2)
        assert Bundle.open(bundle).manifest == old.manifest and not list(tmp_path.glob(".*.new-*"))
        waiting.clear()
        waiter = threading.Thread(target=wait_then_hold)
        waiter.start()
        assert waiting.wait(30)
        os.replace(bundle, tmp_path / "replaced")  # what `train --force` does once it holds the lock
        os.mkdir(bundle)
    finally:
        release.set()
        holder.join()
    waiter.join(30)
    assert waiter_holds == [True] and checks == [
        False,
        True,
    ]  # it got the replaced bundle's lock first, then the new one's


def test_an_interrupted_write_leaves_no_copy_and_a_killed_train_no_staging_folder(bundle, tmp_path, monkeypatch):
    import os

    def interrupted(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            bundles.write_atomic(tmp_path / "big.safetensors", b"x" * 1000)
    assert list(tmp_path.glob(".big*")) == []
    old = Bundle.open(bundle)
    files = {name: (bundle / name).read_bytes() for name in bundles.referenced(old.manifest)}
    no_such_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        killed, fresh, running = (
            tmp_path / f".{bundle.name}.new-{pid}" for pid in (no_such_pid, no_such_pid + 1, sleeper.pid)
        )
        for folder in (killed, fresh, running):
            folder.mkdir()
        an_hour_ago = time.time() - bundles.STALE_STAGING_SECONDS - 60
        for folder in (killed, running):
            os.utime(folder, (an_hour_ago, an_hour_ago))
        bundles.create(bundle, old.manifest, files, force=True)
        # removed: a dead train's, an hour old; kept: one a few seconds old (a train in another container?)
        # and a live one
        assert sorted(p.name for p in tmp_path.glob(".*.new-*")) == sorted([fresh.name, running.name])
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_train_force_replaces_the_bundle_and_leaves_nothing_beside_it(bundle, tmp_path, monkeypatch, swap):
    old = Bundle.open(bundle)
    files = {name: (bundle / name).read_bytes() for name in bundles.referenced(old.manifest)}
    exchanged, real_exchange = [], bundles.exchange
    monkeypatch.setattr(
        bundles, "exchange", lambda a, b: exchanged.append(swap == "exchange" and real_exchange(a, b)) or exchanged[-1]
    )
    bundles.create(bundle, dataclasses.replace(old.manifest, seed=7), files, force=True)
    if swap == "exchange" and exchanged != [True]:
        pytest.skip("this file system cannot exchange two paths in one step (renameat2)")
    assert Bundle.open(bundle).manifest.seed == 7 and len(exchanged) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging or retired folder beside it


def test_a_stopped_train_force_names_the_previous_bundle(bundle):
    bundle.rename(bundle.parent / f".{bundle.name}.old-4242")
    with pytest.raises(
        EdgeclError,
        match=rf"no such bundle; a `train` replacing it is swapping it in, or was stopped while it did: "
        rf"the previous bundle is .*\.{bundle.name}\.old-4242",
    ):
        Bundle.open(bundle)


def test_two_concurrent_learners_both_land(bundle, tmp_path):
    from conftest import make_image_folder

    first = make_image_folder(tmp_path / "a", ["yellow"], seed=1) / "yellow"
    second = make_image_folder(tmp_path / "b", ["purple"], seed=2) / "purple"
    code = (
        "import sys; from pathlib import Path; from edgecl.runtime.service import learn; "
        "learn(Path(sys.argv[1]), Path(sys.argv[2]), show_progress=False)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(bundle), str(f)], stderr=subprocess.PIPE, text=True)
        for f in (first, second)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    m = Bundle.open(bundle).manifest
    assert sorted(m.class_names[3:]) == ["purple", "yellow"]
    assert [s.index for s in m.sessions] == [0, 1, 2]
    method = load_method(Bundle.open(bundle))
    assert method.num_classes == 5 and len(method.sessions) == 3
    assert torch.isfinite(method.predict(torch.randn(2, method.embedding_dim))).all()


def test_a_bundle_written_by_release_0_1_0_still_loads_classifies_and_learns(tmp_path):
    """tests/data/bundle-0.1.0 was written by edgecl 0.1.0 before the package was restructured (a random-init
    test_efficientnet, edgecl at small settings, two sessions); its predictions then are in the -expected file."""
    from conftest import make_image_folder

    data = Path(__file__).parent / "data"
    old = Path(shutil.copytree(data / "bundle-0.1.0", tmp_path / "bundle"))
    make_image_folder(tmp_path / "base", ["red", "green", "blue"], count=4)
    make_image_folder(tmp_path / "new", ["yellow"], count=4, seed=10)
    expected = json.loads((data / "bundle-0.1.0-expected.json").read_text())
    predictions, skipped = Classifier(old, "torch").classify(
        [tmp_path / e["image"] for e in expected], top_k=4, show_progress=False
    )
    assert skipped == [] and len(predictions) == len(expected)
    for got, want in zip(predictions, expected):
        assert [t["label"] for t in got.top_k] == [t["label"] for t in want["top_k"]]
        assert [t["score"] for t in got.top_k] == pytest.approx([t["score"] for t in want["top_k"]], rel=1e-4, abs=1e-7)
    make_image_folder(tmp_path / "more", ["purple"], count=4, seed=20)
    learn(old, tmp_path / "more" / "purple", show_progress=False)
    assert Bundle.open(old).manifest.class_names == ["blue", "green", "red", "yellow", "purple"]


HOLD_THEN_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgecl.core import bundle as bundles
    from edgecl.core.files import held_scratch
    path = Path(sys.argv[1])
    with held_scratch(path.parent / f".{path.name}.{sys.argv[2]}-{os.getpid()}") as scratch:
        (scratch / "part.onnx").write_bytes(b"half an export")
        if sys.argv[3] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        print("holding", flush=True)
        sys.stdin.read()
    """
)


def test_leftovers_of_killed_trains_and_exports_are_removed_by_the_next_writer_at_once(bundle, new_images):
    for kind in ("new", "export"):
        done = subprocess.run(
            [sys.executable, "-c", HOLD_THEN_DIE, str(bundle), kind, "die"], capture_output=True, text=True
        )
        assert done.returncode == -9, done.stderr
    live = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_DIE, str(bundle), "export", "live"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline().strip() == "holding"
        beside = lambda: sorted(p.name for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}."))  # noqa: E731
        assert len(beside()) == 6  # three folders, each with its marker
        learn(bundle, new_images / "grey", show_progress=False)
        assert beside() == [
            f".{bundle.name}.export-{live.pid}",
            f".{bundle.name}.export-{live.pid}.alive",
        ]  # the live one stays
    finally:
        live.communicate("")
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.")]
