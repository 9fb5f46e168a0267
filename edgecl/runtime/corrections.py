"""Correcting a bundle on the device: forget a class, rename one, undo the last change.

Each is one atomic update under the bundle's lock (a process killed during it leaves the bundle as it
was or as it became), and each but `undo` first keeps the bundle as it was in its history, so `undo`
can take it back; the history is bounded by the manifest's `history_limit`.

Forgetting is exact in what the bundle answers: the class is never predicted again and no longer
counts in the "unknown" score (its mean is left out). It is not an unlearning of the class's images
from the parts that were fitted on them together with others (the analytic classifiers' Gram matrix,
TOSCA's modules, SAFE's fast learner): the bundle keeps no images or per-image data, so there is
nothing to subtract them with. `undo` right after a session restores the bundle exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecl.core import bundle as bundles
from edgecl.core.images import check_class_name
from edgecl.errors import EdgeclError, param, unknown_name


@dataclass
class Correction:
    description: str  # what changed, for a one-line report
    classes: list[str]  # the classes the bundle predicts now


def _active(manifest: bundles.Manifest, name: str, where: str) -> int:
    for index, entry in enumerate(manifest.classes):
        if entry.name == name and not entry.forgotten:
            return index
    if any(entry.name == name for entry in manifest.classes):
        raise EdgeclError(f"{param(where)} {name}: the bundle forgot that class (`info` lists it)")
    raise EdgeclError(
        f"{param(where)} {name}: the bundle has no class of that name; "
        f"{unknown_name(name, manifest.active_class_names)}"
    )


def forget(bundle_path: Path, name: str, *, lock_timeout: float = 60.0) -> Correction:
    with bundles.update(bundle_path, lock_timeout) as change:
        m = change.manifest
        index = _active(m, name, "name")
        if len(m.active_class_names) == 1:
            raise EdgeclError(
                f"{param('name')} {name}: it is the bundle's last class; a bundle must predict at least one"
            )
        m.remember(f"forget {name}")
        m.classes[index].forgotten = True
    return Correction(f"forgot {name}: it is never predicted again", change.manifest.active_class_names)


def rename(bundle_path: Path, old: str, new: str, *, lock_timeout: float = 60.0) -> Correction:
    check_class_name(new, param("new"))
    with bundles.update(bundle_path, lock_timeout) as change:
        m = change.manifest
        index = _active(m, old, "old")
        if new in m.active_class_names:
            raise EdgeclError(
                f"{param('new')} {new}: the bundle has a class of that name already; choose another, or "
                "forget that one first"
            )
        m.remember(f"rename {old} -> {new}")
        m.classes[index].name = new
        for session in m.sessions[m.classes[index].session :]:  # the sessions that learned it, under its new name
            session.classes = [new if c == old else c for c in session.classes]
            session.added_to = [new if c == old else c for c in session.added_to]
    return Correction(f"renamed {old} to {new}", change.manifest.active_class_names)


def undo(bundle_path: Path, *, lock_timeout: float = 60.0) -> Correction:
    with bundles.update(bundle_path, lock_timeout) as change:
        m = change.manifest
        if not m.history:
            raise EdgeclError(
                f"{bundle_path}: nothing to undo (no earlier state is kept: every change kept has been undone, "
                f"or none was made; a bundle keeps up to its last {m.history_limit} changes)"
            )
        before = m.history[-1]
        backbone = m.backbone
        try:
            m.restore(before)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise EdgeclError(
                f"{bundle_path / bundles.MANIFEST}: the last entry of its history cannot be restored "
                f"({type(err).__name__}: {str(err)[:120]}); the bundle is damaged"
            ) from None
        m.history = m.history[:-1]
        if m.backbone.get("sha256") != backbone.get("sha256"):  # an undone `adapt`: the export described its backbone
            m.export, m.engines = None, {}
    return Correction(
        f"undid the {before.get('change', 'last change')}: the bundle is as it was at "
        f"{before.get('updated', 'its previous state')}",
        change.manifest.active_class_names,
    )
