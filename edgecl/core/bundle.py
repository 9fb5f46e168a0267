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
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from edgecl import __version__
from edgecl.core.bundle_files import SUBFOLDERS, BundleFiles, UnsafeName, check_name
from edgecl.core.files import LOCK, exchange, fsync_dir, held_scratch, locked, remove_abandoned, write_atomic
from edgecl.core.preprocess import PreprocessConfig
from edgecl.errors import DamagedFile, EdgeclError, param

FORMAT = "edgecl-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest of 100,000 classes is a few MB
MAX_EMBEDDING_DIM = 1 << 16
BACKBONE_FILE = "backbone.safetensors"
ONNX_FILE = "backbone.onnx"
HEADS_ONNX_FILE = "heads.onnx"  # the heads' inference, their tensors as inputs (edgecl/host/heads_onnx.py)
INFLORA_MEMORY_FILE = "inflora_memory.safetensors"  # DualGPM bases, for later host sessions
ENGINES_DIR = "engines"
HEADS_STEM = "heads"
JOURNAL_STEM = "journal"  # the heads' journal entries (edgecl/core/heads_journal.py)
STALE_STAGING_SECONDS = 3600


# What loading a bundle relies on; a hand edit that breaks one is named instead of failing deep inside.
ENTRY_TYPES = {
    ("backbone", "name"): str,
    ("backbone", "embedding_dim"): int,
    ("backbone", "file"): str,
    ("backbone", "sha256"): str,
    ("heads", "file"): str,
    ("heads", "sha256"): str,
    ("heads", "structure"): dict,
    ("method", "name"): str,
    ("method", "config"): dict,
    ("preprocess", "input_size"): list,
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ClassEntry:
    name: str
    session: int
    forgotten: bool = False  # `edgecl forget`: kept for its place in the heads, never predicted again


@dataclass
class SessionEntry:
    index: int
    classes: list[str]
    images: int
    skipped: int
    seed: int
    created: str
    stats: dict[str, float] = field(default_factory=dict)
    # how known the session's training images look, each held out of its own class (KNOWN_BINS bins over 0..1):
    # what "unknown" is calibrated on
    known_histogram: list[int] = field(default_factory=list, repr=False)
    added_to: list[str] = field(default_factory=list)  # known classes the session brought more images of


HISTORY_LIMIT = 3  # changes `undo` can take back; each keeps the heads files it named
SNAPSHOT_FIELDS = ("backbone", "preprocess", "method", "heads", "classes", "sessions", "updated")
KNOWN_BINS = 100
KEEP_KNOWN = 0.95  # the default threshold keeps this fraction of known images


def min_score_of(sessions: list[SessionEntry], keep: float = KEEP_KNOWN) -> float:
    """The known-score threshold that keeps `keep` of the sessions' held-out images (0: none calibrated)."""
    counts = [sum(c) for c in zip(*(s.known_histogram for s in sessions if len(s.known_histogram) == KNOWN_BINS))]
    total = sum(counts)
    if not total:
        return 0.0
    below = 0
    for index, count in enumerate(counts):
        if below + count > (1 - keep) * total:
            return index / KNOWN_BINS
        below += count
    return 1.0


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
    # the bundle as it was before each of its last changes (learn, adapt, forget, rename), newest last, for `undo`;
    # each is this manifest's heads, classes, sessions, backbone and method, without export, engines and history
    history: list[dict[str, Any]] = field(default_factory=list)
    history_limit: int = HISTORY_LIMIT

    @property
    def class_names(self) -> list[str]:
        """Every class in the heads' order, forgotten ones too (their places in the heads stay)."""
        return [c.name for c in self.classes]

    @property
    def active_class_names(self) -> list[str]:
        return [c.name for c in self.classes if not c.forgotten]

    def snapshot(self) -> dict[str, Any]:
        return {key: copy.deepcopy(value) for key, value in dataclasses.asdict(self).items() if key in SNAPSHOT_FIELDS}

    def remember(self, change: str) -> None:
        """Keep the manifest as it is now in the history (the oldest beyond the limit dropped), before `change`
        (what is about to be done, as `undo` and `info` name it)."""
        entry = {**self.snapshot(), "change": change}
        self.history = [*self.history, entry][-self.history_limit :] if self.history_limit else []

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.backbone, self.preprocess, self.method, self.heads = (
            snapshot[k] for k in ("backbone", "preprocess", "method", "heads")
        )
        self.classes = [ClassEntry(**c) for c in snapshot["classes"]]
        self.sessions = [SessionEntry(**s) for s in snapshot["sessions"]]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
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
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise EdgeclError(f"{where}: missing field(s) {', '.join(missing)}")
        for (group, key), kind in ENTRY_TYPES.items():
            value = data[group].get(key) if isinstance(data.get(group), dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise EdgeclError(
                    f"{where}: {group}.{key} = {value!r:.40} is not of type {kind.__name__}; the bundle is damaged"
                )
        limit = data.get("history_limit", HISTORY_LIMIT)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 0 <= limit <= 100
            or not isinstance(data.get("history", []), list)
        ):
            raise EdgeclError(f"{where}: history_limit = {limit!r:.20} (0 to 100) or history is damaged")
        if not 0 < data["backbone"]["embedding_dim"] <= MAX_EMBEDDING_DIM:
            raise EdgeclError(
                f"{where}: backbone.embedding_dim = {data['backbone']['embedding_dim']} is not a width edgecl "
                f"takes (1 to {MAX_EMBEDDING_DIM}); the bundle is damaged"
            )
        data = {k: v for k, v in data.items() if k in names}
        try:
            data["classes"] = [ClassEntry(**c) for c in data.get("classes", [])]
            data["sessions"] = [SessionEntry(**s) for s in data.get("sessions", [])]
        except TypeError as err:  # a hand-edited or truncated entry
            raise EdgeclError(f"{where}: a malformed class or session entry ({err})") from err
        return cls(**data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def file_entry(name: str, data: bytes) -> dict[str, Any]:
    """What a manifest records of a file it names: its name, sha256 and size."""
    return {"file": name, "sha256": sha256_bytes(data), "size": len(data)}


def content_named(stem: str, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], bytes]:
    """({"file": "<stem>-<sha16>.safetensors", "sha256": ..., "size": ...}, the file's bytes)."""
    data = tensors_to_bytes(tensors)
    return file_entry(f"{stem}-{sha256_bytes(data)[:16]}.safetensors", data), data


def named_files(manifest: Manifest) -> list[tuple[str, Any]]:
    """(where in the manifest, the name it holds) for every file the manifest names, its history's too."""
    named = _files_of(manifest.heads, manifest.backbone, "")
    if manifest.export:
        named.append(("export.file", manifest.export.get("file")))
        heads_graph = manifest.export.get("heads") or {}
        if "file" in heads_graph:
            named.append(("export.heads.file", heads_graph["file"]))
    for key, engine in manifest.engines.items():
        named += [
            (f"engines.{key}.{k}", engine[k])
            for k in ("file", "timing_cache")
            if isinstance(engine, dict) and k in engine
        ]
    for i, past in enumerate(manifest.history):
        if (
            not isinstance(past, dict)
            or not isinstance(past.get("heads"), dict)
            or not isinstance(past.get("backbone"), dict)
        ):
            raise EdgeclError(f"history[{i}] is not a manifest of the bundle's past; the bundle is damaged")
        named += _files_of(past["heads"], past["backbone"], f"history[{i}].")
    return named


def _files_of(heads: dict, backbone: dict, prefix: str) -> list[tuple[str, Any]]:
    named = [(f"{prefix}heads.file", heads.get("file")), (f"{prefix}backbone.file", backbone.get("file"))]
    journal = heads.get("journal") or []
    if not isinstance(journal, list) or not all(isinstance(e, dict) for e in journal):
        raise EdgeclError(f"{prefix}heads.journal is not a list of files; the bundle is damaged")
    named += [(f"{prefix}heads.journal[{i}].file", e.get("file")) for i, e in enumerate(journal)]
    memory = (backbone.get("inflora") or {}).get("memory")
    if memory:
        named.append(
            (f"{prefix}backbone.inflora.memory.file", memory.get("file") if isinstance(memory, dict) else memory)
        )
    return named


def check_named_files(manifest: Manifest, where: Path) -> None:
    """A manifest that names a file outside its bundle (or not as a plain name) is refused, naming the entry."""
    for entry, name in named_files(manifest):
        try:
            check_name(name)
        except UnsafeName as err:
            raise UnsafeName(f"{where}: {entry} = {str(name)[:80]!r}: {err}; the bundle is refused") from None


class Bundle:
    """A bundle read from disk: its manifest and access to the files it names."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.files = BundleFiles(self.path)

    @classmethod
    def open(cls, path: Path) -> Bundle:
        path = Path(path)
        if not path.exists():
            retired = sorted(
                path.parent.glob(glob.escape(_retired(path, "").name) + "*"), key=lambda p: p.stat().st_mtime
            )
            if retired:
                raise EdgeclError(
                    f"{path}: no such bundle; a `train` replacing it is swapping it in, or was stopped while it did: "
                    f"the previous bundle is {retired[-1]}"
                )
            raise EdgeclError(f"{path}: no such bundle (train one, or give {param('bundle')} the path of one)")
        if not path.is_dir():
            raise EdgeclError(f"{path}: not a folder, so not an edgecl bundle")
        try:
            raw = BundleFiles(path).read(MANIFEST, None)
        except DamagedFile:
            raise EdgeclError(f"{path}: not an edgecl bundle (no {MANIFEST})") from None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise EdgeclError(f"{path / MANIFEST}: {len(raw)} bytes, more than a manifest holds; the bundle is damaged")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise EdgeclError(
                f"{path / MANIFEST}: not UTF-8 text ({err.reason} at byte {err.start}); the bundle is damaged"
            ) from None
        manifest = Manifest.from_json(text, path / MANIFEST)
        check_named_files(manifest, path / MANIFEST)
        for sub in SUBFOLDERS:
            if (path / sub).is_symlink() or ((path / sub).exists() and not (path / sub).is_dir()):
                raise UnsafeName(
                    f"{path / sub}: is not a folder of the bundle (a symlink, or a file); the bundle is refused"
                )
        try:
            PreprocessConfig.from_dict(manifest.preprocess)
        except EdgeclError as err:
            raise EdgeclError(f"{path / MANIFEST}: {err}; the bundle is damaged") from None
        return cls(path, manifest)

    def read_bytes(self, entry: dict[str, Any]) -> bytes:
        file = self.path / entry["file"]
        size = entry.get("size")
        data = self.files.read(entry["file"], size if isinstance(size, int) and not isinstance(size, bool) else None)
        if sha256_bytes(data) != entry["sha256"]:
            raise DamagedFile(f"{file}: checksum mismatch; the bundle is damaged")
        return data

    def read_tensors(self, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
        data = self.read_bytes(entry)
        try:
            return load_safetensors(data)
        except Exception as err:  # noqa: BLE001 - a header too large, bad offsets, pickle bytes: all one damaged file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise DamagedFile(
                f"{self.path / entry['file']}: not a readable safetensors file ({first}); the bundle is damaged"
            ) from None

    def heads(self) -> dict[str, torch.Tensor]:
        return self.read_tensors(self.manifest.heads)

    def backbone_weights(self) -> dict[str, torch.Tensor]:
        return self.read_tensors(self.manifest.backbone)

    def size_bytes(self) -> dict[str, int | None]:
        """Each file the manifest names, and the manifest: its size, or None where it is missing."""
        return {name: self.files.size(name) for name in sorted(referenced(self.manifest) | {MANIFEST})}


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


class BundleUpdate:
    """Changes to a bundle under its lock; `commit` makes them visible all at once."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.manifest = copy.deepcopy(bundle.manifest)
        self.written: list[str] = []
        self.discarded = False
        self.committed = False  # the new manifest is in place: what it names must stay, whatever comes after

    def write_tensors(self, stem: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        entry, data = content_named(stem, tensors)
        # a file of this name is trusted only if it holds these bytes: one planted, or cut short, is replaced
        if not self.bundle.files.digest_matches(entry["file"], entry["sha256"]):
            self.bundle.files.write(entry["file"], data)
            self.written.append(entry["file"])
        return entry

    def write_file(self, name: str, data: bytes) -> dict[str, Any]:
        """A file under the bundle, relative name (may be in engines/); visible once committed.
        Where the current manifest names `name` for other bytes, the new file is `<stem>-<sha16><suffix>`
        instead: readers use the live file until the commit, and a failed update must leave it whole."""
        digest = sha256_bytes(data)
        if name in referenced(self.bundle.manifest) and not self.bundle.files.digest_matches(name, digest):
            name = PurePosixPath(name).with_stem(f"{PurePosixPath(name).stem}-{digest[:16]}").as_posix()
        self.bundle.files.write(name, data)
        self.written.append(name)
        return file_entry(name, data)

    def commit(self) -> None:
        """The new manifest replaces the old one: the commit point."""
        self.manifest.updated = now()
        check_named_files(self.manifest, self.bundle.path / MANIFEST)
        self.bundle.files.write(MANIFEST, self.manifest.to_json().encode(), replaced=self._committed)

    def _committed(self) -> None:
        self.committed = True

    def clean(self) -> None:
        """After the commit: remove what no manifest names any more."""
        keep = referenced(self.manifest) | {MANIFEST, LOCK}
        # files the old manifest named, and content-named ones a killed writer may have left
        stale = [
            n
            for n in (*self.bundle.files.listing(), *self.bundle.files.listing(ENGINES_DIR))
            if n not in keep and re.fullmatch(STALE_NAMES, n)
        ]
        for name in {*stale, *(referenced(self.bundle.manifest) - keep)}:
            self.bundle.files.unlink(name)
        for sub in (None, ENGINES_DIR):
            self.bundle.files.remove_temporary(sub)

    def discard(self) -> None:
        """Leave the bundle as it is: `update` commits nothing and removes what this change wrote."""
        self.discarded = True

    def abandon(self) -> None:
        keep = referenced(self.bundle.manifest)
        for name in self.written:
            if name not in keep:
                self.bundle.files.unlink(name)


# what a writer creates, and so what may be removed once no manifest names it
STALE_NAMES = (
    r"(heads|journal|backbone|inflora_memory)-[0-9a-f]{16}\.safetensors"
    r"|backbone[-0-9a-f]*\.onnx|heads[-0-9a-f]*\.onnx|engines/[^./][^/]*"
)


def referenced(manifest: Manifest) -> set[str]:
    """Every file the manifest names (relative paths)."""
    return {str(name) for _, name in named_files(manifest)}


@contextmanager
def update(path: Path, lock_timeout: float = 60.0) -> Iterator[BundleUpdate]:
    """Lock, re-read the bundle (another writer may have committed meanwhile), yield, commit."""
    Bundle.open(path)
    with locked(path, lock_timeout):
        change = BundleUpdate(Bundle.open(path))
        try:
            yield change
            if not change.discarded:
                change.commit()
        except BaseException as err:  # a commit that failed too (a full disk): what this change wrote goes
            if not change.committed:
                change.abandon()
                raise
            if not isinstance(err, KeyboardInterrupt):
                raise
            # Ctrl-C while the committed manifest was being synced: the change is made; finish it
        if change.discarded:
            change.abandon()
        else:
            change.clean()
    remove_leftovers(Path(path))


def _retired(path: Path, pid: int | str) -> Path:
    """Where `train --force` moves the old bundle while it swaps the new one in."""
    return path.parent / f".{path.name}.old-{pid}"


def check_creatable(path: Path, force: bool) -> None:
    """Before any training: the bundle can be written at `path`."""
    path = Path(path)  # messages name it as given
    if path.exists() and not path.is_dir():
        raise EdgeclError(f"{path}: exists and is not a folder")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise EdgeclError(
            f"{path}: cannot be created: {ancestor} is {'not a folder' if not ancestor.is_dir() else 'not writable'}"
        )
    if path.exists() and any(path.iterdir()):
        if not (path / MANIFEST).is_file():  # --force replaces a bundle, never a folder of other files
            raise EdgeclError(
                f"{path}: exists and is not an edgecl bundle (no {MANIFEST}); choose another {param('out', 'bundle')}"
            )
        if not force:
            raise EdgeclError(f"{path}: already exists; pass {param('force', 'force=True')} to replace it")


def remove_leftovers(path: Path) -> None:
    """What killed writers of the bundle at `path` left beside it: a `train`'s staging folder, an export's scratch."""
    for kind in ("new", "export"):
        remove_abandoned(path.parent, f".{path.name}.{kind}-", legacy_age=STALE_STAGING_SECONDS)


def scratch_beside(path: Path):
    """A scratch folder beside the bundle for a writer's work in progress (removed after; a killed writer's is
    removed by the next writer)."""
    return held_scratch(Path(path).parent / f".{Path(path).name}.export-{os.getpid()}")


def create(
    path: Path, manifest: Manifest, files: dict[str, bytes], *, force: bool = False, lock_timeout: float = 60.0
) -> Bundle:
    """Write a new bundle beside `path`, then rename it into place (replacing an old one with force)."""
    path = Path(path)
    check_creatable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    with held_scratch(path.parent / f".{path.name}.new-{os.getpid()}") as staging:
        for name, data in files.items():
            write_atomic(staging / name, data)
        write_atomic(staging / MANIFEST, manifest.to_json().encode())
        if path.exists():
            with locked(
                path, lock_timeout
            ):  # a learn on the old bundle commits before, or waits and lands in the new one
                if exchange(staging, path):  # staging now holds the old bundle, removed with it
                    retired = None
                else:
                    retired = _retired(path, os.getpid())
                    os.replace(path, retired)
                    os.replace(staging, path)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
        fsync_dir(path.parent)
    return Bundle.open(path)
