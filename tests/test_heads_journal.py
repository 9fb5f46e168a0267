"""The heads' journal: a session writes what changed, classifying reads base + journal, learning replays
it to the same numbers a bundle that wrote its whole heads every session has."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import PLUMBING_BACKBONE, make_image_folder

from edgecl.core import heads_journal
from edgecl.core.bundle import Bundle
from edgecl.core.images import find_images
from edgecl.core.session import load_method
from edgecl.host.train import train
from edgecl.runtime.service import Classifier, learn

SETTINGS = {
    "safe.slow.epochs": "0",
    "safe.projection": "512",
    "tosca.min_steps": "0",
    "safe.min_steps": "0",
    "tosca.epochs": "1",
    "safe.epochs": "1",
}
NEW = ["yellow", "grey", "purple", "yellow2", "grey2", "purple2"]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, base_images):
    root = tmp_path_factory.mktemp("journal")
    bundle = root / "bundle"
    train(base_images, bundle, backbone=PLUMBING_BACKBONE, random_init=True, settings=SETTINGS, show_progress=False)
    folders = []
    for i, name in enumerate(NEW):
        colour = name.rstrip("2")
        folder = make_image_folder(root / f"s{i}", [colour], count=4, seed=100 + i) / colour
        folders.append((folder, name))
    return bundle, folders


def test_sessions_write_small_entries_and_a_new_base_after_the_limit(sessions, tmp_path):
    bundle, folders = sessions
    path = shutil.copytree(bundle, tmp_path / "b")
    base = Bundle.open(path).manifest.heads["size"]
    for i, (folder, name) in enumerate(folders):
        learn(path, folder, label=name, show_progress=False)
        heads = Bundle.open(path).manifest.heads
        journal = heads.get("journal", [])
        assert len(journal) == (i + 1) % (heads_journal.JOURNAL_LIMIT + 1)
        if journal:
            assert journal[-1]["size"] < base / 3  # what one class changed, not every tensor again
    assert Bundle.open(path).manifest.active_class_names[-len(NEW) :] == NEW


def test_a_journal_classifies_and_learns_exactly_as_whole_heads_do(sessions, tmp_path, base_images, monkeypatch):
    bundle, folders = sessions
    journaled, whole = (shutil.copytree(bundle, tmp_path / name) for name in ("journaled", "whole"))
    for folder, name in folders[:3]:
        learn(journaled, folder, label=name, show_progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(heads_journal, "JOURNAL_LIMIT", 0)  # every session writes a new base
        for folder, name in folders[:3]:
            learn(whole, folder, label=name, show_progress=False)
    assert (
        len(Bundle.open(journaled).manifest.heads["journal"]) == 3
        and "journal" not in Bundle.open(whole).manifest.heads
    )
    paths = find_images([base_images, *(f for f, _ in folders[:3])])
    a, _ = Classifier(journaled, "torch").classify(paths, top_k=3, show_progress=False)
    b, _ = Classifier(whole, "torch").classify(paths, top_k=3, show_progress=False)
    assert [(p.label, p.top_k, p.known) for p in a] == [(p.label, p.top_k, p.known) for p in b]
    replayed = load_method(Bundle.open(journaled), learning=True).state_dict()
    written = load_method(Bundle.open(whole), learning=True).state_dict()
    assert replayed.keys() == written.keys()
    for name in replayed:
        assert torch.allclose(replayed[name].double(), written[name].double(), atol=1e-6, rtol=1e-6), name
    # a classifier loaded to classify refuses to learn: its factors are the base's
    stale = load_method(Bundle.open(journaled))
    with pytest.raises(RuntimeError, match="loaded to classify"):
        stale.safe.slow_head.add(
            torch.zeros(1, stale.embedding_dim), torch.zeros(1, dtype=torch.long), stale.num_classes
        )
