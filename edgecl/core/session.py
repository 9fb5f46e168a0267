"""A session, the same on the host and on the device: class folders -> labelled embeddings ->
the method learns them -> the manifest records the new classes and the session.

`edgecl train` (host), `edgecl learn` (device) and `edgecl eval` all run a session through
`run_session`, so the figures of an evaluation describe what a user gets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from edgecl import __version__
from edgecl.core import bundle as bundles
from edgecl.core import heads_journal
from edgecl.core.bundle import KNOWN_BINS, Bundle, ClassEntry, Manifest, SessionEntry
from edgecl.core.embedding import CPU_BATCH_SIZE, EmbedBatch, embed_images
from edgecl.core.images import ClassImages, describe, paths_and_labels
from edgecl.core.methods import METHODS, ContinualMethod, MethodConfig, method_config, restore_method
from edgecl.core.preprocess import PreprocessConfig
from edgecl.errors import EdgeclError, param


@dataclass
class LabeledEmbeddings:
    features: torch.Tensor
    targets: torch.Tensor  # 0.. within the session, one per class folder
    skipped: list[str] = field(default_factory=list)


def session_generator(seed: int, session: int) -> torch.Generator:
    """Every random choice of session `session` of a bundle seeded `seed` comes from this."""
    state = np.random.SeedSequence([seed, session]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def embed_classes(
    classes: Sequence[ClassImages],
    embed: EmbedBatch,
    preprocess: PreprocessConfig,
    *,
    batch_size: int = CPU_BATCH_SIZE,
    show_progress: bool = True,
) -> LabeledEmbeddings:
    images, indices = paths_and_labels(classes)
    labels = torch.tensor(indices)
    result = embed_images(images, embed, preprocess, batch_size=batch_size, show_progress=show_progress)
    targets = labels[result.kept]
    for i, group in enumerate(classes):
        if not bool((targets == i).any()):
            first = next(j for j, k in enumerate(indices) if k == i)
            reason = next((r for r in result.skipped if r.startswith(f"{describe(images[first], first)}:")), "")
            raise EdgeclError(
                f"class {group.name}: none of its {len(group.images)} image(s) could be read ({reason or 'unreadable'})"
            )
    return LabeledEmbeddings(result.features, targets, result.skipped)


def stored_config(bundle: Bundle) -> MethodConfig:
    """The config of the bundle's method; a method this edgecl does not know is named as such."""
    m = bundle.manifest
    if m.method["name"] not in METHODS:
        raise EdgeclError(
            f"{bundle.path / bundles.MANIFEST}: method {m.method['name']!r} is not one edgecl {__version__} knows "
            f"({', '.join(sorted(METHODS))}); a newer edgecl wrote it, or the manifest is damaged"
        )
    return method_config(m.method["name"], m.method["config"])


def load_method(bundle: Bundle, *, learning: bool = False) -> ContinualMethod:
    """The bundle's heads: its base file and the journal of sessions since (edgecl/core/heads_journal.py).
    `learning`: brought up to date for another session (the analytic classifiers replay the journal)."""
    m = bundle.manifest
    config = stored_config(bundle)  # names a method this edgecl does not know, before its heads are read
    check_structure_fits(bundle, config)
    journal = m.heads.get("journal") or []
    base_structure = m.heads.get("base_structure", m.heads["structure"]) if journal else m.heads["structure"]

    def restore(structure: dict, state: dict | None) -> ContinualMethod:
        if state is None:
            method = METHODS[m.method["name"]](config, m.backbone["embedding_dim"])
            method.build(structure)
            return method
        return restore_method(m.method["name"], m.backbone["embedding_dim"], m.method["config"], structure, state)

    try:
        entries = [(e["structure"], bundle.read_tensors(e)) for e in journal]
        method = heads_journal.replay(
            restore, base_structure, bundle.heads(), entries, learning=learning, max_classes=len(m.classes)
        )
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:  # tensors of other shapes, a missing one
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        first = " ".join(lines[:2])[:200]  # torch's first line is a header; the second names the tensors
        raise EdgeclError(
            f"{bundle.path / m.heads['file']}: the heads do not fit the manifest's method ({first}); "
            "the bundle is damaged"
        ) from None
    if method.num_classes != len(m.classes):  # a hand-edited class list would shift or drop labels
        raise EdgeclError(
            f"{bundle.path / bundles.MANIFEST}: lists {len(m.classes)} classes "
            f"but the heads have {method.num_classes}; "
            "the bundle is damaged"
        )
    return method


def write_heads(change: bundles.BundleUpdate, method: ContinualMethod, before: dict | None) -> dict:
    """The heads after a session, written into the update: a journal entry against the heads the session
    started from (`before`, heads_journal.start's), or, after JOURNAL_LIMIT entries or without `before`, a
    new base. Returns the manifest's new heads entry."""
    previous = change.manifest.heads
    journal = list(previous.get("journal") or [])
    structure = method.structure()
    if before is None or len(journal) >= heads_journal.JOURNAL_LIMIT:
        heads_journal.start(method)  # forget the session's recorded inputs: the base holds their effect
        return {**change.write_tensors(bundles.HEADS_STEM, method.state_dict()), "structure": structure}
    entry = change.write_tensors(bundles.JOURNAL_STEM, heads_journal.entry(method, before))
    base = {k: previous[k] for k in ("file", "sha256", "size") if k in previous}
    return {
        **base,
        "structure": structure,
        "base_structure": previous.get("base_structure", previous["structure"]),
        "journal": [*journal, {**entry, "structure": structure}],
    }


def check_structure_fits(bundle: Bundle, config: MethodConfig) -> None:
    """The manifest's structure of the heads, sized without allocating (on PyTorch's meta device), must fit
    the heads file: a hand-edited count cannot make edgecl allocate what no file holds."""
    m = bundle.manifest
    journal = m.heads.get("journal") or []
    structures = [("heads.structure", m.heads["structure"])]
    if journal:
        structures.append(("heads.base_structure", m.heads.get("base_structure", m.heads["structure"])))
        structures += [(f"heads.journal[{i}].structure", e.get("structure")) for i, e in enumerate(journal)]
    need = 0
    for where, structure in structures:  # what loading builds, the base and every entry
        try:
            with torch.device("meta"):
                probe = METHODS[m.method["name"]](config, m.backbone["embedding_dim"])
                probe.build(structure)
            need = max(need, sum(t.numel() * t.element_size() for t in probe.state_dict().values()))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise EdgeclError(
                f"{bundle.path / bundles.MANIFEST}: {where} does not describe {m.method['name']}'s heads "
                f"({type(err).__name__}: {str(err)[:120]}); the bundle is damaged"
            ) from None
    sizes = [bundle.files.size(e["file"]) for e in [m.heads, *journal]]
    size = None if None in sizes else sum(sizes)
    # slack: tensors a bundle of an older edgecl lacks, and what a journal's entries leave to be recomputed
    if size is not None and need > size * 1.1 + (8 << 20):
        raise EdgeclError(
            f"{bundle.path / bundles.MANIFEST}: heads.structure asks for {need / 1e6:.1f} MB of tensors, "
            f"more than {m.heads['file']} holds ({size / 1e6:.1f} MB); the bundle is damaged"
        )


def run_session(
    method: ContinualMethod,
    data: LabeledEmbeddings,
    names: Sequence[str],
    seed: int,
    index: int,
    *,
    known_classes: Sequence[str | None] = (),
    show_progress: bool = True,
) -> SessionEntry:
    """One session: `names[i]` is the class of the images labelled i; a name among `known_classes` (the
    bundle's, in order) adds its images to that class, the others are new classes."""
    empty = [name for i, name in enumerate(names) if not bool((data.targets == i).any())]
    if empty:  # eval's splits reach here unchecked: a class whose every training image was unreadable
        raise EdgeclError(f"class {empty[0]!r}: no readable training image, so the session cannot learn it")
    position = {name: i for i, name in enumerate(known_classes) if name is not None}
    fresh = [name for name in names if name not in position]
    added = [name for name in names if name in position]
    if added and not method.adds_to_classes:
        raise EdgeclError(
            f"class {added[0]!r} exists already, and method {method.name} cannot add images to a class it knows"
        )
    method.config.check_session(len(fresh))
    mapping = torch.tensor([position[n] if n in position else method.num_classes + fresh.index(n) for n in names])
    targets = mapping[data.targets]
    start = time.perf_counter()
    stats = method.learn(data.features, targets, session_generator(seed, index), show_progress=show_progress)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    active = torch.tensor([name is not None for name in known_classes] + [True] * len(fresh))
    held_out = method.held_out_known_scores(data.features, targets, None if active.all() else active)
    histogram = torch.histc(held_out[~held_out.isnan()].float(), bins=KNOWN_BINS, min=0, max=1)
    return SessionEntry(
        index,
        fresh,
        len(data.targets),
        len(data.skipped),
        seed,
        bundles.now(),
        stats,
        [int(v) for v in histogram.tolist()],
        added,
    )


def record_session(manifest: Manifest, method: ContinualMethod, heads: dict, session: SessionEntry) -> None:
    """The session and its heads (write_heads' entry, or a file entry of the whole heads) into the manifest."""
    manifest.heads = heads if "structure" in heads else {**heads, "structure": method.structure()}
    manifest.classes.extend(ClassEntry(name, session.index) for name in session.classes)
    manifest.sessions.append(session)


def check_new_names(
    classes: Sequence[ClassImages], manifest: Manifest, label: str | None = None, *, add: bool = False
) -> None:
    """Names already taken are an error, unless the session adds to known classes (`add`)."""
    if add:
        return
    known = {c.name: c.session for c in manifest.classes}
    for group in classes:
        if group.name in known:
            fix = (
                f"choose another {param('label')}"
                if label is not None
                else f"use {param('label')} to give the new class another name"
                if len(classes) == 1
                else "rename its folder"
            )
            raise EdgeclError(f"class {group.name!r} already exists (learned in session {known[group.name]}); {fix}")
