"""The device loop: add images to a class, forget, rename, undo, say "unknown", check a bundle
(random-init backbones: plumbing, not accuracy; the accuracy of these is in docs/benchmarks.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import COLOURS, PLUMBING_BACKBONE, make_image_folder, write_class
from test_cli import edgecl, one_line_error

from edgecl.core.analytic import AnalyticClassifier
from edgecl.core.bundle import Bundle, min_score_of
from edgecl.core.images import find_images
from edgecl.core.layers import held_out_known, known_from_means, merge_class_statistics, resemblance
from edgecl.errors import EdgeclError
from edgecl.host.train import train
from edgecl.runtime import service
from edgecl.runtime.corrections import forget, rename, undo
from edgecl.runtime.service import LOOKALIKE, LOOKALIKE_MIN_IMAGES, Classifier, learn

SMALL = {"safe.slow.epochs": "0", "safe.projection": "128", "safe.min_steps": "0", "safe.epochs": "1"}


@pytest.fixture(scope="module")
def safe_bundle(tmp_path_factory, base_images):
    path = tmp_path_factory.mktemp("safe") / "bundle"
    train(
        base_images,
        path,
        backbone=PLUMBING_BACKBONE,
        random_init=True,
        method="safe",
        settings={"slow.epochs": "0", "projection": "128", "min_steps": "0", "epochs": "1"},
        show_progress=False,
    )
    return path


@pytest.fixture
def adds(safe_bundle, tmp_path):
    return shutil.copytree(safe_bundle, tmp_path / "bundle")


def test_the_analytic_classifier_learns_added_images_exactly_as_if_learned_together():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 16, generator=g), torch.arange(3).repeat(20)
    together, apart = AnalyticClassifier(16, 64, 0), AnalyticClassifier(16, 64, 0)
    together.add(x, y, 3, ridges=(0.5,))
    first = torch.cat([torch.arange(0, 60, 3)[:5], torch.arange(1, 60, 3), torch.arange(2, 60, 3)])
    rest = torch.arange(0, 60, 3)[5:]
    apart.add(x[first], y[first], 3, ridges=(0.5,))
    apart.add(x[rest], y[rest], 3, ridges=(0.5,))  # 15 more images of class 0, a class it knows
    assert torch.allclose(apart.weight, together.weight, atol=1e-4, rtol=1e-4)


def test_class_means_counts_and_typical_similarity_merge_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20, 8, generator=g)
    y = torch.zeros(20, dtype=torch.long)
    means, counts, sims = merge_class_statistics(torch.zeros(0, 8), torch.zeros(0), torch.zeros(0), x[:5], y[:5], 1)
    means, counts, sims = merge_class_statistics(means, counts, sims, x[5:], y[5:], 1)
    assert counts.tolist() == [20] and torch.allclose(means[0], x.mean(0), atol=1e-6)
    assert 0 < sims[0] <= 1
    # held out: an image scores against its class mean without itself
    loo = held_out_known(x, y, means, counts, sims)
    inside = known_from_means(x, means, sims)
    assert (loo <= inside + 1e-6).all() and (loo < inside).any()


def test_learn_with_a_known_label_adds_to_that_class(adds, new_images, tmp_path):
    before = Bundle.open(adds).manifest
    more = make_image_folder(tmp_path / "more", ["red"], count=4, seed=50) / "red"
    result = learn(adds, more, label="red", show_progress=False)
    after = Bundle.open(adds).manifest
    assert result.session.classes == [] and result.session.added_to == ["red"]
    assert after.class_names == before.class_names and len(after.sessions) == 2
    # and through the command line, with a new class in the same folder
    mixed = make_image_folder(tmp_path / "mixed", ["green", "purple"], count=3, seed=60)
    done = edgecl("learn", "--images", mixed, "--bundle", adds, "-q")
    assert done.exit_code == 0 and "learned purple and added to green as session 2" in done.stdout
    assert Bundle.open(adds).manifest.class_names == [*before.class_names, "purple"]
    rename(adds, "green", "lime")  # the session that added to it says so under the new name
    assert [s.added_to for s in Bundle.open(adds).manifest.sessions] == [[], ["red"], ["lime"]]
    data = json.loads((adds / "manifest.json").read_text())
    data["history"][-1]["classes"] = [{"name": "x", "session": 0, "colour": "red"}]  # a hand edit
    (adds / "manifest.json").write_text(json.dumps(data))
    one_line_error(edgecl("undo", "--bundle", adds), "history cannot be restored", "the bundle is damaged")


def test_a_method_that_cannot_add_to_a_class_says_so_before_any_work(bundle, new_images, tmp_path, monkeypatch):
    from edgecl.core.methods import METHODS

    monkeypatch.setattr(METHODS["tosca"], "adds_to_classes", False)  # as inflora (its per-session heads) cannot
    more = make_image_folder(tmp_path / "more", ["red"], count=2) / "red"
    one_line_error(
        edgecl("learn", "--images", more, "--label", "red", "--bundle", bundle),
        "class 'red' exists already",
        "(tosca) cannot add images to a class",
        "--label",
    )


def test_forget_rename_and_undo(adds, base_images):
    paths = find_images([base_images])
    original = Bundle.open(adds).manifest
    expected, _ = Classifier(adds, min_score=0).classify(paths, top_k=3, show_progress=False)
    forget(adds, "red")
    after, _ = Classifier(adds, min_score=0).classify(paths, top_k=3, show_progress=False)
    assert all(p.label != "red" and all(t["label"] != "red" for t in p.top_k) for p in after)
    assert all(abs(sum(t["score"] for t in p.top_k) - 1) < 1e-4 for p in after)  # two classes left: the top 2 sum to 1
    with pytest.raises(EdgeclError, match="name red: the bundle forgot that class"):
        forget(adds, "red")
    with pytest.raises(EdgeclError, match="old red: the bundle forgot that class"):
        rename(adds, "red", "crimson")
    rename(adds, "green", "lime")
    assert Bundle.open(adds).manifest.active_class_names == ["blue", "lime"]
    with pytest.raises(EdgeclError, match="new blue: the bundle has a class of that name already"):
        rename(adds, "lime", "blue")
    with pytest.raises(EdgeclError, match="old nope: the bundle has no class"):
        rename(adds, "nope", "x")
    with pytest.raises(EdgeclError, match=r"old lim: .* did you mean lime\? \(2: blue, lime\)"):
        rename(adds, "lim", "x")
    history = [h["change"] for h in Bundle.open(adds).manifest.history[-2:]]
    assert history == ["forget red", "rename green -> lime"]
    assert undo(adds).description.startswith("undid the rename green -> lime: the bundle is as it was at ")
    assert undo(adds).description.startswith("undid the forget red: ")
    m = Bundle.open(adds).manifest
    assert (m.heads, m.classes, m.sessions) == (original.heads, original.classes, original.sessions)
    again, _ = Classifier(adds, min_score=0).classify(paths, top_k=3, show_progress=False)
    assert [(p.label, p.top_k) for p in again] == [(p.label, p.top_k) for p in expected]
    with pytest.raises(EdgeclError, match="nothing to undo"):
        undo(adds)


def test_learn_says_when_a_new_class_looks_like_one_the_bundle_knows(adds, new_images, tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(service.log, "warning", lambda text, *args: said.append(text % args))
    write_class(tmp_path / "crimson", COLOURS["red"], 6, seed=70)  # red again, under another name
    result = learn(adds, tmp_path / "crimson", show_progress=False)
    assert list(result.lookalikes) == ["crimson"] and result.lookalikes["crimson"][0] == "red"
    assert result.lookalikes["crimson"][1] >= LOOKALIKE
    assert len(said) == 1 and said[0].startswith("'crimson' looks like the known class 'red' taught again")
    assert learn(adds, new_images / "yellow", show_progress=False).lookalikes == {}
    assert learn(adds, tmp_path / "crimson", label="red", show_progress=False).lookalikes == {}  # added to red
    write_class(tmp_path / "two" / "scarlet", COLOURS["red"], LOOKALIKE_MIN_IMAGES - 1, seed=71)
    assert learn(adds, tmp_path / "two" / "scarlet", show_progress=False).lookalikes == {}  # too few to say


def _three_classes(centres: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The means and typical cosines of 200 noisy images around each of three centres."""
    images = centres.repeat_interleave(200, 0) + torch.randn(600, 32, generator=g)
    targets = torch.arange(3).repeat_interleave(200)
    means = torch.stack([images[targets == c].mean(0) for c in range(3)])
    unit = torch.nn.functional.normalize(images, dim=-1)
    typical = torch.stack(
        [(unit[targets == c] @ torch.nn.functional.normalize(means[c], dim=0)).mean() for c in range(3)]
    )
    return means, typical


def test_resemblance_is_about_one_for_another_sample_of_a_class():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 32, generator=g) * 3
    means, typical = _three_classes(centres, g)
    again = centres[1] + torch.randn(10, 32, generator=g)
    counts = torch.full((3,), 200.0)
    best, closeness, rival = resemblance(again, means, typical, counts)
    assert best == 1 and closeness == pytest.approx(1.0, abs=0.03) and rival < 0.5  # the classes point apart
    other = torch.randn(10, 32, generator=g) * 3
    assert resemblance(other, means, typical, counts).closeness < 0.8
    active = torch.tensor([True, False, True])  # class 1 forgotten
    assert resemblance(again, means, typical, counts, active).known != 1  # a forgotten class is never named
    assert resemblance(again, means, torch.zeros(3), counts) is None  # a bundle that kept no typical cosines


def test_resemblance_says_when_the_known_classes_already_look_alike():
    # classes that share one large direction (a raw ViT [CLS]): each class's mean reads as another taught again
    g = torch.Generator().manual_seed(1)
    shared = torch.randn(32, generator=g) * 6
    centres = shared + torch.randn(3, 32, generator=g) * 0.3
    means, typical = _three_classes(centres, g)
    new_class = shared + torch.randn(32, generator=g) * 0.3 + torch.randn(10, 32, generator=g)
    counts = torch.tensor([200.0, 5.0, 50.0])
    found = resemblance(new_class, means, typical, counts)
    assert found.closeness >= LOOKALIKE and found.rival >= LOOKALIKE  # so learn says nothing
    # the rival: each other class's mean against the named one's, over what n_j of its images would read
    b, unit_means = found.known, torch.nn.functional.normalize(means, dim=-1)
    s, n = typical[b], counts[b]
    a2 = (s**2 - 1 / n) / (1 - 1 / n)
    by_hand = max(
        float((unit_means[j] @ unit_means[b]) / (a2 / (s * torch.sqrt(a2 + (1 - a2) / counts[j]))))
        for j in range(3)
        if j != b
    )
    assert found.rival == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(("rival", "warned"), [(0.5, True), (0.97, False)])
def test_learn_names_a_lookalike_only_while_no_other_known_class_reads_as_it(monkeypatch, rival, warned):
    from types import SimpleNamespace

    from edgecl.core.layers import Resemblance
    from edgecl.core.session import LabeledEmbeddings

    method = SimpleNamespace(resemblance=lambda features, active: Resemblance(0, 0.99, rival))
    manifest = SimpleNamespace(classes=[SimpleNamespace(name="bolt", forgotten=False)])
    data = LabeledEmbeddings(torch.zeros(LOOKALIKE_MIN_IMAGES, 4), torch.zeros(LOOKALIKE_MIN_IMAGES, dtype=torch.long))
    found = service.lookalikes(method, data, ["screw"], manifest)
    assert found == ({"screw": ("bolt", 0.99)} if warned else {})


def test_the_correcting_commands_say_what_they_did_unless_quiet(adds):
    said = edgecl("forget", "red", "--bundle", adds)
    assert said.exit_code == 0 and said.output.startswith("forgot red")
    assert "forgotten  red (session 0): never predicted" in edgecl("info", "--bundle", adds).output
    for command in (["rename", "green", "lime"], ["undo"], ["undo"]):
        quiet = edgecl(*command, "--bundle", adds, "-q")
        assert (quiet.exit_code, quiet.output) == (0, "")
    assert Bundle.open(adds).manifest.active_class_names == ["blue", "green", "red"]


def test_undo_after_a_learn_gives_back_the_bundle_before_it(adds, new_images):
    before = Bundle.open(adds)
    learn(adds, new_images, show_progress=False)
    assert len(Bundle.open(adds).manifest.history) == 1
    assert undo(adds).description.startswith("undid the learn of session 1 (grey, yellow)")
    after = Bundle.open(adds)
    assert (after.manifest.heads, after.manifest.classes, after.manifest.sessions) == (
        before.manifest.heads,
        before.manifest.classes,
        before.manifest.sessions,
    )
    assert after.read_bytes(after.manifest.heads) == before.read_bytes(before.manifest.heads)
    assert sorted(p.name for p in adds.glob("heads-*")) == [before.manifest.heads["file"]]  # the undone heads are gone


def test_the_history_is_bounded(adds, tmp_path):
    for i in range(5):
        learn(
            adds,
            make_image_folder(tmp_path / f"s{i}", ["purple"], count=2, seed=70 + i) / "purple",
            label=f"p{i}",
            show_progress=False,
        )
    m = Bundle.open(adds).manifest
    assert len(m.history) == m.history_limit == 3
    from edgecl.core.bundle import referenced

    on_disk = {p.name for p in [*adds.glob("heads-*"), *adds.glob("journal-*")]}
    assert on_disk == {
        n for n in referenced(m) if n.startswith(("heads-", "journal-"))
    }  # the live heads, those undo needs


KILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgecl.core.bundle_files import BundleFiles
    from edgecl.runtime import corrections
    real_write = BundleFiles.write

    def die_on_the_manifest(self, name, data, **kwargs):
        if name == "manifest.json":
            (self.root / f".{name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_write(self, name, data, **kwargs)

    BundleFiles.write = die_on_the_manifest
    verb, *args = sys.argv[2:]
    getattr(corrections, verb)(Path(sys.argv[1]), *args)
    """
)


@pytest.mark.parametrize("verb, args", [("forget", ["red"]), ("rename", ["red", "crimson"]), ("undo", [])])
def test_a_killed_correction_leaves_the_bundle_as_it_was(adds, new_images, verb, args):
    learn(adds, new_images / "grey", show_progress=False)
    before = (adds / "manifest.json").read_bytes()
    done = subprocess.run([sys.executable, "-c", KILL, str(adds), verb, *args], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert (adds / "manifest.json").read_bytes() == before
    Classifier(adds).classify(find_images([new_images / "grey"]), show_progress=False)


def test_unknown_is_calibrated_at_train_and_said_under_the_threshold(adds, base_images, tmp_path):
    m = Bundle.open(adds).manifest
    threshold = min_score_of(m.sessions)
    assert 0 < threshold < 1 and sum(m.sessions[0].known_histogram) == 18
    write_class(tmp_path / "odd" / "odd", (10, 240, 250), 6, seed=90)
    everything = find_images([base_images, tmp_path / "odd"])
    never, _ = Classifier(adds, min_score=0).classify(everything, show_progress=False)
    always, _ = Classifier(adds, min_score=1).classify(everything, show_progress=False)
    assert all(p.label != "unknown" for p in never) and all((p.label == "unknown") == (p.known < 1) for p in always)
    assert any(p.label == "unknown" for p in always)
    default, _ = Classifier(adds).classify(everything, show_progress=False)
    assert all((p.label == "unknown") == (p.known < threshold) for p in default)
    with pytest.raises(EdgeclError, match="min_score 1.5: must be a number from 0 to 1"):
        Classifier(adds, min_score=1.5)
    one_line_error(
        edgecl("classify", base_images, "--bundle", adds, "--min-score", "-0.1"),
        "--min-score -0.1: must be a number from 0 to 1",
    )


def test_a_forgotten_class_does_not_count_in_the_calibration_of_unknown():
    x = torch.tensor([[1.0, 0.0]])  # an image of class 0, whose other image is [0, 1]
    means = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # class 1 (to be forgotten) sits right on it
    counts, similarity = torch.tensor([2.0, 5.0]), torch.tensor([0.7, 1.0])
    assert held_out_known(x, torch.tensor([0]), means, counts, similarity).item() == pytest.approx(1.0)
    alone = held_out_known(x, torch.tensor([0]), means, counts, similarity, torch.tensor([True, False]))
    assert alone.item() == pytest.approx(0.0, abs=1e-6)  # held out of its own class, it resembles nothing


def test_an_image_that_is_all_its_class_has_is_left_out_of_the_calibration():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    means, counts, similarity = torch.tensor([[1.0, 0.0], [0.05, 1.0]]), torch.tensor([1.0, 2.0]), torch.ones(2)
    scores = held_out_known(x, torch.tensor([0, 1, 1]), means, counts, similarity)
    assert scores[0].isnan() and not scores[1:].isnan().any()  # class 0 has one image: nothing to hold out


def test_the_plain_output_of_an_unknown_gives_its_known_score_and_the_best_classes(adds, base_images):
    result = edgecl("classify", base_images / "red", "--bundle", adds, "--min-score", "1", "--top-k", "2", "-q")
    records = json.loads(
        edgecl("classify", base_images / "red", "--bundle", adds, "--min-score", "1", "-k", "2", "--json", "-q").stdout
    )
    for line, record in zip(result.stdout.strip().splitlines(), records):
        fields = line.split("\t")
        if record["label"] == "unknown":
            assert fields[1:] == ["unknown", f"{record['known']:.4f}"] + [
                value for t in record["top_k"] for value in (t["label"], f"{t['score']:.4f}")
            ]
        else:
            assert fields[1:] == [record["label"], f"{record['score']:.4f}", record["top_k"][1]["label"], fields[4]]
    assert any(r["label"] == "unknown" for r in records)


def test_val_reports_accuracy_confusion_and_the_unknown_rate(adds, base_images, tmp_path):
    folder = tmp_path / "check"
    shutil.copytree(base_images, folder)
    write_class(folder / "odd", (10, 240, 250), 6, seed=91)
    result = edgecl("val", folder, "--bundle", adds, "--json", tmp_path / "val.json", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "val.json").read_text())
    assert report["known"] == ["blue", "green", "red"] and report["unseen"] == ["odd"]
    assert report["confusion"]["columns"] == ["blue", "green", "red", "unknown"]
    assert sum(map(sum, report["confusion"]["counts"])) == 24 and 0 <= report["unknown_rate_of_unseen_classes"] <= 1
    assert "accuracy" in result.stdout and "odd (not a class of the bundle)" in result.stdout
    lone = tmp_path / "lone"
    write_class(lone / "nothing_known", (1, 2, 3), 2, seed=92)
    one_line_error(edgecl("val", lone, "--bundle", adds), "DIR", "none of its class folders")


@pytest.mark.parametrize("method", ["edgecl", "tosca", "tosca-paper", "simplecil"])
def test_every_part_of_a_method_takes_more_images_of_a_known_class(tmp_path, base_images, method):
    settings = SMALL if method == "edgecl" else {}
    path = tmp_path / "bundle"
    train(
        base_images,
        path,
        backbone=PLUMBING_BACKBONE,
        random_init=True,
        method=method,
        settings=settings,
        epochs=None if method == "simplecil" else 1,
        show_progress=False,
    )
    more = make_image_folder(tmp_path / "more", ["red", "purple"], count=3, seed=80)
    result = learn(path, more, show_progress=False)
    assert result.session.classes == ["purple"] and result.session.added_to == ["red"]
    from edgecl.core.session import load_method

    heads = load_method(Bundle.open(path))
    counts = heads.tosca.class_count if method == "edgecl" else getattr(heads, "class_count", None)
    if counts is not None:
        assert counts.tolist() == [6, 6, 9, 3]  # blue green red (6 + 3 more) purple
    paths = find_images([more])
    predictions, _ = Classifier(path, min_score=0).classify(paths, show_progress=False)
    assert len(predictions) == 6
