"""A bundle from elsewhere is safe: whatever its manifest names and whatever its folder holds, nothing
outside it is opened, written or removed, and every failure is one line. The folder beside the bundle
is watched with inotify while the commands run, so a read through a symlink is caught too."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import shutil
import struct
import sys
from pathlib import Path

import pytest
from conftest import PLUMBING_BACKBONE, QUICK_EDGECL
from test_cli import edgecl, one_line_error

from edgecl.core.bundle import Bundle
from edgecl.core.bundle_files import UnsafeName
from edgecl.errors import DamagedFile, EdgeclError

IN_EVENTS = (
    0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200
)  # access, modify, attrib, close, open, moves, create, delete
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify watches the file system on Linux only")


class Watched:
    """Every inotify event on the files of a folder: who opened, read, wrote, created or removed one."""

    def __init__(self, folder: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_EVENTS) >= 0

    def events(self) -> list[str]:
        found = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0").decode()
                found.append(f"{name or '.'}: {mask:#x}")
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder beside the bundle with files a hostile manifest points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("victim", "heads.safetensors", "backbone.onnx", "engine"):
        (outside / name).write_bytes(b"precious " + name.encode())
    (outside / "dir").mkdir()
    (outside / "dir" / "file").write_bytes(b"precious file in a folder")
    return outside


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, data: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(data))


def untouched(outside: Path) -> dict:
    return {p.relative_to(outside).as_posix(): p.read_bytes() for p in outside.rglob("*") if p.is_file()}


@pytest.fixture
def exported(bundle, base_images):
    import edgecl

    edgecl.export(bundle, "cpu", [base_images])
    return bundle


def names_pointing_outside(outside: Path) -> list[str]:
    return [
        "../outside/victim",
        str(outside / "victim"),
        "engines/../../outside/victim",
        "../../" * 8 + str(outside)[1:] + "/victim",
        "",
        ".",
        "..",
        "engines/",
        "a/b/c",
        "heads\\..\\x",
        ".hidden",
        "engines/.x",
        "other/x",
    ]


@pytest.mark.parametrize("entry", ["heads", "backbone", "export", "export.heads", "engine", "timing_cache"])
def test_every_name_a_manifest_holds_is_checked_before_anything_is_opened(exported, victim, entry):
    data = manifest(exported)
    for name in names_pointing_outside(victim):
        hostile = json.loads(json.dumps(data))
        target = {
            "heads": hostile["heads"],
            "backbone": hostile["backbone"],
            "export": hostile["export"],
            "export.heads": hostile["export"]["heads"],
        }.get(entry)
        if entry in ("engine", "timing_cache"):
            hostile["engines"] = {
                "sm87-x": {"file": "engines/k.engine", "sha256": "0" * 64, "timing_cache": "engines/k.cache"}
            }
            target, key = hostile["engines"]["sm87-x"], "file" if entry == "engine" else "timing_cache"
        else:
            key = "file"
        target[key] = name
        write_manifest(exported, hostile)
        with pytest.raises(UnsafeName, match="is not a file inside the bundle|not a plain file name|not a file name"):
            Bundle.open(exported)
    write_manifest(exported, data)


@linux
def test_commands_on_hostile_bundles_touch_nothing_outside_them(exported, victim, base_images, new_images, tmp_path):
    """Random names (outside, absolute, `..`), files that are symlinks or FIFOs, subfolders that are links: each
    command either refuses in one line or works inside the bundle; the watched folder sees no event at all."""
    rng = random.Random(7)
    data, pristine = manifest(exported), Path(shutil.copytree(exported, tmp_path / "pristine"))
    before = untouched(victim)
    watch = Watched(victim)
    try:
        for trial in range(24):
            shutil.rmtree(exported)
            shutil.copytree(pristine, exported)
            hostile = json.loads(json.dumps(data))
            kind = rng.choice(["name", "symlink", "fifo", "linked-folder", "lock"])
            entry = rng.choice([hostile["heads"], hostile["backbone"], hostile["export"], hostile["export"]["heads"]])
            if kind == "name":
                entry["file"] = rng.choice(names_pointing_outside(victim))
            elif kind == "symlink":
                (exported / entry["file"]).unlink()
                (exported / entry["file"]).symlink_to(
                    victim / rng.choice(["victim", "heads.safetensors", "backbone.onnx"])
                )
            elif kind == "fifo":
                (exported / entry["file"]).unlink()
                os.mkfifo(exported / entry["file"])
            elif kind == "linked-folder":
                (exported / "engines").symlink_to(victim / "dir")
            else:
                (exported / ".lock").unlink(missing_ok=True)
                (exported / ".lock").symlink_to(victim / "victim")
            write_manifest(exported, hostile)
            for command in (
                ["info"],
                ["classify", str(base_images / "red")],
                ["learn", "--images", str(new_images / "grey")],
                ["export", "--target", "cpu"],
            ):
                result = edgecl(
                    *command, "--bundle", exported, *(["-q"] if command[0] in ("classify", "learn") else [])
                )
                assert result.exit_code in (0, 1), (kind, command, result.output, result.stderr)
                if result.exit_code == 1:
                    assert len(result.stderr.strip().splitlines()) == 1, (kind, command, result.stderr)
            assert watch.events() == [], f"trial {trial} ({kind}) touched the folder outside the bundle"
    finally:
        watch.close()
    assert untouched(victim) == before


def test_export_never_deletes_what_an_old_manifest_names_outside(exported, victim):
    data = manifest(exported)
    data["export"]["file"] = "../outside/victim"
    write_manifest(exported, data)
    one_line_error(
        edgecl("export", "--target", "cpu", "--bundle", exported),
        "export.file",
        "not a plain file name inside the bundle",
    )
    assert (victim / "victim").read_bytes() == b"precious victim"


def test_a_symlinked_engines_folder_is_refused_and_its_target_kept(exported, victim, new_images):
    (exported / "engines").symlink_to(victim / "dir")
    one_line_error(
        edgecl("learn", "--images", new_images / "grey", "--bundle", exported, "-q"),
        "engines",
        "not a folder of the bundle",
    )
    assert (victim / "dir" / "file").exists()


def test_a_backbone_outside_the_bundle_with_the_right_checksum_is_not_used(exported, victim):
    data = manifest(exported)
    shutil.copy(exported / "backbone.safetensors", victim / "backbone.safetensors")
    data["backbone"]["file"] = str(victim / "backbone.safetensors")
    write_manifest(exported, data)
    one_line_error(edgecl("classify", victim, "--bundle", exported, "--runtime", "torch"), "backbone.file")


def test_a_symlinked_file_of_the_right_content_is_refused_too(exported, victim):
    shutil.copy(exported / "backbone.safetensors", victim / "weights")
    (exported / "backbone.safetensors").unlink()
    (exported / "backbone.safetensors").symlink_to(victim / "weights")
    with pytest.raises(UnsafeName, match="is a symlink"):
        Bundle.open(exported).backbone_weights()


def test_a_planted_file_under_the_next_heads_name_is_checked_and_replaced(bundle, new_images):
    import edgecl as api

    twin = Path(shutil.copytree(bundle, bundle.parent / "twin"))
    expected = api.load(twin)
    expected.learn({"grey": list((new_images / "grey").iterdir())})
    heads = Bundle.open(twin).manifest.heads
    written = heads["journal"][-1] if heads.get("journal") else heads  # the file the learn wrote
    name = written["file"]
    assert not (bundle / name).exists()
    real = (twin / name).read_bytes()
    (bundle / name).write_bytes(real[: len(real) // 2])  # what the next learn will write, cut short
    api.load(bundle).learn({"grey": list((new_images / "grey").iterdir())})
    b = Bundle.open(bundle)
    assert b.manifest.heads == heads and (bundle / name).read_bytes() == real
    b.read_tensors(written)  # loads, checksum and all
    assert api.load(bundle).classes == api.load(twin).classes


def test_model_kwargs_that_reach_timm_are_an_allow_list(exported, base_images):
    data = manifest(exported)
    data["backbone"]["model_kwargs"] = {"checkpoint_path": "/etc/passwd"}
    write_manifest(exported, data)
    images = base_images / "red"
    one_line_error(
        edgecl("classify", images, "--bundle", exported, "--runtime", "torch", "-q"), "model_kwargs", "checkpoint_path"
    )
    data["backbone"]["model_kwargs"] = {}
    data["backbone"]["name"] = "hf-hub:someone/model"
    write_manifest(exported, data)
    one_line_error(
        edgecl("classify", images, "--bundle", exported, "--runtime", "torch", "-q"), "not a timm model name"
    )


def test_an_onnx_graph_with_external_data_is_refused_and_pytorch_serves(exported, base_images):
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load_from_string((exported / "backbone.onnx").read_bytes())
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (exported / "weights.bin").write_bytes(tensor.raw_data)
    set_external_data(tensor, location="weights.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    replace_export(exported, model.SerializeToString())
    result = edgecl("classify", base_images / "red", "--bundle", exported, "-q")
    assert result.exit_code == 0 and "refers to tensors in files outside the graph" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout.count("\n") == 6  # one warning line, then the answers


@pytest.mark.parametrize("graph", [b"\x08\x07garbage that is no graph", "unknown-op"])
def test_an_onnx_graph_onnxruntime_refuses_falls_back_to_pytorch_in_one_line(exported, base_images, graph):
    import onnx

    if graph == "unknown-op":
        model = onnx.load_from_string((exported / "backbone.onnx").read_bytes())
        model.graph.node[0].op_type, model.graph.node[0].domain = "NoSuchOp", "edgecl.nowhere"
        model.opset_import.add(domain="edgecl.nowhere", version=1)
        graph = model.SerializeToString()
    replace_export(exported, graph)
    result = edgecl("classify", base_images / "red", "--bundle", exported, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: the exported backbone cannot run here") and result.stderr.count("\n") == 1


def replace_export(bundle: Path, data: bytes) -> None:
    import hashlib

    (bundle / "backbone.onnx").write_bytes(data)
    m = manifest(bundle)
    m["export"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    write_manifest(bundle, m)


def set_heads(bundle: Path, data: bytes) -> None:
    import hashlib

    m = manifest(bundle)
    (bundle / m["heads"]["file"]).write_bytes(data)
    m["heads"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    write_manifest(bundle, m)


def tensors_with(bundle: Path, change) -> bytes:
    from safetensors.torch import load, save

    tensors = load((bundle / manifest(bundle)["heads"]["file"]).read_bytes())
    change(tensors)
    return save(tensors)


@pytest.mark.parametrize("case", ["huge header", "bad offsets", "pickle", "wrong shape", "missing tensor", "structure"])
def test_damaged_tensor_files_are_one_line(bundle, case):
    import pickle

    import torch

    if case == "huge header":
        data = struct.pack("<Q", 1 << 40) + b"{}"
    elif case == "bad offsets":
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}).encode()
        data = struct.pack("<Q", len(header)) + header + b"\0" * 16
    elif case == "pickle":
        data = pickle.dumps({"w": [1.0, 2.0]})
    elif case == "wrong shape":
        data = tensors_with(bundle, lambda t: t.update({k: torch.zeros(3, 3) for k in list(t)[:1]}))
    elif case == "missing tensor":
        data = tensors_with(bundle, lambda t: t.pop(min(k for k in t if "class_count" not in k)))  # not an old one
    else:
        data = (bundle / manifest(bundle)["heads"]["file"]).read_bytes()
    set_heads(bundle, data)
    if case == "structure":
        m = manifest(bundle)
        m["heads"]["structure"] = {"sessions": 10**6, "classes": 10**6}
        write_manifest(bundle, m)
    one_line_error(edgecl("info", "--bundle", bundle), "the bundle is damaged")


@pytest.mark.parametrize("where", ["base_structure", "entry structure", "recorded classes"])
def test_a_journal_cannot_size_what_the_heads_do_not_hold(tmp_path, base_images, new_images, where):
    import torch
    from safetensors.torch import load, save

    from edgecl.host.train import train
    from edgecl.runtime.service import learn

    bundle = tmp_path / "safe"
    settings = {"slow.epochs": "0", "projection": "128", "min_steps": "0", "epochs": "1"}
    train(base_images, bundle, backbone="test_efficientnet", random_init=True, method="safe", settings=settings)
    learn(bundle, new_images / "grey", show_progress=False)
    data = manifest(bundle)
    entry = data["heads"]["journal"][-1]
    if where == "base_structure":
        data["heads"]["base_structure"] = {"sessions": 10**5, "classes": 10**5}
    elif where == "entry structure":
        entry["structure"] = {"sessions": 10**5, "classes": 10**5}
    else:
        tensors = load((bundle / entry["file"]).read_bytes())
        key = next(k for k in tensors if k.endswith(".classes"))
        tensors[key] = torch.tensor(2**20)
        body = save(tensors)
        name = f"journal-{hashlib.sha256(body).hexdigest()[:16]}.safetensors"
        (bundle / name).write_bytes(body)
        entry.update(file=name, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    write_manifest(bundle, data)
    if where == "recorded classes":  # only learning replays what a session was given
        one_line_error(edgecl("learn", "--images", new_images / "yellow", "--bundle", bundle, "-q"), "damaged")
    else:
        one_line_error(edgecl("info", "--bundle", bundle), "structure", "the bundle is damaged")


@pytest.mark.parametrize("case", ["not utf-8", "string size", "huge size", "embedding"])
def test_a_hand_edited_manifest_is_one_line(bundle, case):
    raw = (bundle / "manifest.json").read_bytes()
    m = json.loads(raw)
    if case == "not utf-8":
        (bundle / "manifest.json").write_bytes(raw.replace(b'"format"', b'"form\xff\xfeat"'))
    else:
        if case == "string size":
            m["preprocess"]["input_size"] = [3, "224", 224]
        elif case == "huge size":
            m["preprocess"]["input_size"] = [3, 40000, 40000]
        else:
            m["backbone"]["embedding_dim"] = 10**9
        write_manifest(bundle, m)
    one_line_error(edgecl("info", "--bundle", bundle), "manifest.json", "the bundle is damaged")


def test_a_whitening_flag_that_disagrees_with_its_tensors_names_them(base_images, tmp_path):
    from edgecl.host.train import train

    bundle = tmp_path / "edgecl"
    train(base_images, bundle, backbone=PLUMBING_BACKBONE, random_init=True, settings=QUICK_EDGECL, show_progress=False)
    m = json.loads((bundle / "manifest.json").read_text())
    whiten = m["heads"]["structure"]["whiten"]
    assert isinstance(whiten, bool)
    m["heads"]["structure"]["whiten"] = not whiten  # tensors the flag does not want, or no tensors where it does
    write_manifest(bundle, m)
    one_line_error(edgecl("info", "--bundle", bundle), "centre", "the bundle is damaged")


def test_a_full_disk_names_the_file_and_leaves_no_orphan(bundle, new_images, monkeypatch):
    from edgecl.core import bundle_files

    real_write, before = os.write, sorted(p.name for p in bundle.iterdir() if p.name != ".lock")

    def full_disk_on_the_manifest(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".manifest.json.tmp-" + str(os.getpid())):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(bundle_files.os, "write", full_disk_on_the_manifest)
    result = edgecl("learn", "--images", new_images / "grey", "--bundle", bundle, "-q")
    one_line_error(result, "manifest.json: No space left on device")
    assert (
        sorted(p.name for p in bundle.iterdir() if p.name != ".lock") == before
    )  # the new heads went with the failed commit


def test_a_full_disk_in_train_or_export_names_the_file(base_images, tmp_path, monkeypatch):
    from pathlib import Path as RealPath

    real_write = RealPath.write_bytes

    def full_disk(self, data):
        if ".tmp-" in self.name:
            raise OSError(28, "No space left on device")  # as write() raises it: no file name
        return real_write(self, data)

    monkeypatch.setattr(RealPath, "write_bytes", full_disk)
    out = tmp_path / "new"
    result = edgecl(
        "train",
        base_images,
        "--bundle",
        out,
        "--backbone",
        "test_efficientnet",
        "--random-init",
        "-q",
        "--slow-epochs",
        "0",
    )
    one_line_error(result, "No space left on device", f".{out.name}.new-")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".new")] == []


def test_damaged_file_errors_are_the_damaged_kind(bundle):
    data = manifest(bundle)
    (bundle / data["heads"]["file"]).unlink()
    with pytest.raises(DamagedFile, match="missing; the bundle is damaged"):
        Bundle.open(bundle).heads()
    assert issubclass(UnsafeName, EdgeclError)
