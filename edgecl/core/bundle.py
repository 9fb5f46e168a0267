"""The bundle: one directory that carries a trained edgecl model from the host to the device.

    manifest.json                 format name + version, backbone, preprocessing, method, classes, sessions
    backbone.safetensors          the (merged) frozen backbone weights
    heads-<sha>.safetensors       the method's tensors; the name changes with the content
    backbone.onnx, engines/       once exported
    heads.onnx                    once exported: the heads' inference for onnxruntime, their tensors as inputs

Writes never leave a half-written bundle: new tensor files get new names, each file is written
aside, fsynced and renamed, and the manifest, which names them, is replaced last. That rename is
the commit point; files the new manifest no longer names are removed after it. Writers hold an
exclusive flock on `.lock`; readers take no lock.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from edgecl import __version__
from edgecl.errors import DamagedFile, EdgeclError

FORMAT = "edgecl-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
BACKBONE_FILE = "backbone.safetensors"
ONNX_FILE = "backbone.onnx"
HEADS_ONNX_FILE = "heads.onnx"  # the heads' inference, their tensors as inputs (edgecl/heads_onnx.py)
INFLORA_MEMORY_FILE = "inflora_memory.safetensors"  # DualGPM bases, for later host sessions
ENGINES_DIR = "engines"
HEADS_STEM = "heads"
STALE_STAGING_SECONDS = 3600


# What loading a bundle relies on; a hand edit that breaks one is named instead of failing deep inside.
ENTRY_TYPES = {("backbone", "name"): str, ("backbone", "embedding_dim"): int, ("backbone", "file"): str, ("backbone", "sha256"): str,
               ("heads", "file"): str, ("heads", "sha256"): str, ("heads", "structure"): dict, ("method", "name"): str,
               ("method", "config"): dict, ("preprocess", "input_size"): list}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ClassEntry:
    name: str
    session: int


@dataclass
class SessionEntry:
    index: int
    classes: list[str]
    images: int
    skipped: int
    seed: int
    created: str
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Manifest:
    backbone: dict[str, Any]  # BackboneSpec fields + "file", "sha256"
    preprocess: dict[str, Any]
    method: dict[str, Any]  # "name", "config"
    heads: dict[str, Any]  # "file", "sha256", "structure"
    seed: int
    classes: list[ClassEntry] = field(default_factory=list)
    sessions: list[SessionEntry] = field(default_factory=list)
    export: dict[str, Any] | None = None
    engines: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = FORMAT_VERSION
    edgecl_version: str = __version__
    created: str = field(default_factory=now)
    updated: str = field(default_factory=now)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise EdgeclError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EdgeclError(f"{where}: not an edgecl bundle manifest")
        version = data.get("version")
        if not isinstance(version, int) or version < 1:
            raise EdgeclError(f"{where}: unknown bundle format version {version!r}")
        if version > FORMAT_VERSION:
            raise EdgeclError(
                f"{where}: bundle format version {version} is newer than this edgecl "
                f"({__version__}) supports ({FORMAT_VERSION}); upgrade edgecl"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise EdgeclError(f"{where}: missing field(s) {', '.join(missing)}")
        for (group, key), kind in ENTRY_TYPES.items():
            value = data[group].get(key) if isinstance(data.get(group), dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise EdgeclError(f"{where}: {group}.{key} = {value!r:.40} is not of type {kind.__name__}; the bundle is damaged")
        data = {k: v for k, v in data.items() if k in names}
        try:
            data["classes"] = [ClassEntry(**c) for c in data.get("classes", [])]
            data["sessions"] = [SessionEntry(**s) for s in data.get("sessions", [])]
        except TypeError as err:  # a hand-edited or truncated entry
            raise EdgeclError(f"{where}: a malformed class or session entry ({err})") from err
        return cls(**data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write aside, fsync, rename over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk: no half-written copy left behind (a kill leaves one for the next update)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def content_named(stem: str, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, str], bytes]:
    """({"file": "<stem>-<sha16>.safetensors", "sha256": ...}, the file's bytes)."""
    data = tensors_to_bytes(tensors)
    digest = sha256_bytes(data)
    return {"file": f"{stem}-{digest[:16]}.safetensors", "sha256": digest}, data


class Bundle:
    """A bundle read from disk: its manifest and access to the files it names."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path) -> "Bundle":
        path = Path(path)
        if not path.exists():
            retired = sorted(path.parent.glob(glob.escape(_retired(path, "").name) + "*"), key=lambda p: p.stat().st_mtime)
            if retired:
                raise EdgeclError(f"{path}: no such bundle; a `train --force` is replacing it, or was stopped while it did: "
                                  f"the previous bundle is {retired[-1]}")
            raise EdgeclError(f"{path}: no such bundle (create one with `edgecl train`, or pass --bundle)")
        if not (path / MANIFEST).is_file():
            raise EdgeclError(f"{path}: not an edgecl bundle (no {MANIFEST})")
        return cls(path, Manifest.from_json((path / MANIFEST).read_text(), path / MANIFEST))

    def read_bytes(self, entry: dict[str, Any]) -> bytes:
        file = self.path / entry["file"]
        try:
            data = file.read_bytes()
        except FileNotFoundError as err:
            raise DamagedFile(f"{file}: missing; the bundle is damaged") from err
        if sha256_bytes(data) != entry["sha256"]:
            raise DamagedFile(f"{file}: checksum mismatch; the bundle is damaged")
        return data

    def read_tensors(self, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
        return load_safetensors(self.read_bytes(entry))

    def heads(self) -> dict[str, torch.Tensor]:
        return self.read_tensors(self.manifest.heads)

    def backbone_weights(self) -> dict[str, torch.Tensor]:
        return self.read_tensors(self.manifest.backbone)

    def size_bytes(self) -> dict[str, int | None]:
        """Each file the manifest names, and the manifest: its size, or None where it is missing."""
        return {name: (self.path / name).stat().st_size if (self.path / name).is_file() else None
                for name in sorted(referenced(self.manifest) | {MANIFEST})}


def open_consistent(path: Path, read: Callable[[Bundle], Any], attempts: int = 3) -> tuple[Bundle, Any]:
    """Open and read; retry if a concurrent writer replaced the files between manifest and read."""
    for attempt in range(attempts):
        bundle = Bundle.open(path)
        try:
            return bundle, read(bundle)
        except EdgeclError:
            if attempt == attempts - 1 or Bundle.open(path).manifest == bundle.manifest:
                raise
    raise AssertionError("unreachable")


def _lock_holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid else ""


def _open_lock(path: Path) -> int:
    try:
        return os.open(Path(path) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise EdgeclError(f"{path}: no such bundle (removed or being replaced while this process waited for it)") from None


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """Exclusive writer lock on the bundle; waits up to `timeout` seconds, then fails clearly."""
    lock_file = Path(path) / LOCK
    fd = _open_lock(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EdgeclError(
                        f"{path}: another edgecl process{_lock_holder(lock_file)} is updating this bundle; "
                        f"gave up after {timeout:g}s (raise --lock-timeout to wait longer)"
                    ) from None
                time.sleep(0.05)
                continue
            if _same_file(fd, lock_file):
                break
            fresh = _open_lock(path)  # `train --force` replaced the bundle while we waited: lock the new one
            os.close(fd)
            fd = fresh
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class BundleUpdate:
    """Changes to a bundle under its lock; `commit` makes them visible all at once."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = copy.deepcopy(bundle.manifest)
        self.written: list[Path] = []
        self.discarded = False

    def write_tensors(self, stem: str, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
        entry, data = content_named(stem, tensors)
        if not (self.bundle.path / entry["file"]).exists():
            self.write_file(entry["file"], data)
        return entry

    def write_file(self, name: str, data: bytes) -> dict[str, str]:
        """A file under the bundle, relative name (may be in engines/); visible once committed.
        Where the current manifest names `name` for other bytes, the new file is `<stem>-<sha16><suffix>`
        instead: readers use the live file until the commit, and a failed update must leave it whole."""
        digest = sha256_bytes(data)
        if name in referenced(self.bundle.manifest) and _file_digest(self.bundle.path / name) != digest:
            name = PurePosixPath(name).with_stem(f"{PurePosixPath(name).stem}-{digest[:16]}").as_posix()
        target = self.bundle.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        self.written.append(target)
        return {"file": name, "sha256": digest}

    def commit(self) -> None:
        self.manifest.updated = now()
        write_atomic(self.bundle.path / MANIFEST, self.manifest.to_json().encode())
        keep = referenced(self.manifest)
        # content-named files a crashed writer may have left
        patterns = [f"{stem}-*.safetensors" for stem in (HEADS_STEM, "backbone", "inflora_memory")] + [
            "backbone*.onnx", "heads*.onnx", f"{ENGINES_DIR}/*"]
        candidates = [*(f for pattern in patterns for f in self.bundle.path.glob(pattern)),
                      *(self.bundle.path / name for name in referenced(self.bundle.manifest))]
        for stale in candidates:
            if stale.relative_to(self.bundle.path).as_posix() not in keep:
                stale.unlink(missing_ok=True)
        for tmp in [*self.bundle.path.glob(".*.tmp-*"), *self.bundle.path.glob(f"{ENGINES_DIR}/.*.tmp-*")]:
            tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Leave the bundle as it is: `update` commits nothing and removes what this change wrote."""
        self.discarded = True

    def abandon(self) -> None:
        keep = referenced(self.bundle.manifest)
        for path in self.written:
            if path.relative_to(self.bundle.path).as_posix() not in keep:
                path.unlink(missing_ok=True)


def _file_digest(path: Path) -> str | None:
    try:
        return sha256_bytes(path.read_bytes())
    except FileNotFoundError:
        return None


def referenced(manifest: Manifest) -> set[str]:
    """Every file the manifest names (relative paths)."""
    names = {manifest.heads["file"], manifest.backbone["file"]}
    memory = manifest.backbone.get("inflora", {}).get("memory")
    if memory:
        names.add(memory["file"])
    if manifest.export:
        names.add(manifest.export["file"])
        heads_graph = manifest.export.get("heads") or {}
        if "file" in heads_graph:
            names.add(heads_graph["file"])
    for engine in manifest.engines.values():
        names.update(str(engine[k]) for k in ("file", "timing_cache") if k in engine)
    return names


@contextmanager
def update(path: Path, lock_timeout: float = 60.0) -> Iterator[BundleUpdate]:
    """Lock, re-read the bundle (another writer may have committed meanwhile), yield, commit."""
    Bundle.open(path)
    with locked(path, lock_timeout):
        change = BundleUpdate(Bundle.open(path))
        try:
            yield change
        except BaseException:
            change.abandon()
            raise
        if change.discarded:
            change.abandon()
        else:
            change.commit()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE), so no reader ever finds
    neither; False where the C library or the file system cannot, and the caller renames twice."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    at_cwd, exchange = -100, 2
    return renameat2 is not None and renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0


def _retired(path: Path, pid: int | str) -> Path:
    """Where `train --force` moves the old bundle while it swaps the new one in."""
    return path.parent / f".{path.name}.old-{pid}"


def check_creatable(path: Path, force: bool) -> None:
    """Before any training: the bundle can be written at `path`."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise EdgeclError(f"{path}: exists and is not a folder")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise EdgeclError(f"{path}: cannot be created: {ancestor} is {'not a folder' if not ancestor.is_dir() else 'not writable'}")
    if path.exists() and any(path.iterdir()):
        if not (path / MANIFEST).is_file():  # --force replaces a bundle, never a folder of other files
            raise EdgeclError(f"{path}: exists and is not an edgecl bundle (no {MANIFEST}); choose another --out")
        if not force:
            raise EdgeclError(f"{path}: already exists; pass --force to replace it")


def create(path: Path, manifest: Manifest, files: dict[str, bytes], *, force: bool = False, lock_timeout: float = 60.0) -> Bundle:
    """Write a new bundle beside `path`, then rename it into place (replacing an old one with force)."""
    path = Path(path)
    check_creatable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(glob.escape(f".{path.name}.new-") + "*"):  # from a train that was killed
        # an hour old as well: a train in another pid namespace (a container on a shared volume) looks dead from here
        if not _alive(stale.name.rpartition("-")[2]) and time.time() - stale.stat().st_mtime > STALE_STAGING_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    staging = path.parent / f".{path.name}.new-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, data in files.items():
            write_atomic(staging / name, data)
        write_atomic(staging / MANIFEST, manifest.to_json().encode())
        if path.exists():
            with locked(path, lock_timeout):  # a learn on the old bundle commits before, or waits and lands in the new one
                if _exchange(staging, path):  # staging now holds the old bundle
                    retired = staging
                else:
                    retired = _retired(path, os.getpid())
                    os.replace(path, retired)
                    os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle.open(path)
