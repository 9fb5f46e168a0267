"""InfLoRA: sessions merge into a plain backbone, the memory fills, later sessions stay out of the
old sessions' inputs (measured against plain LoRA on real images), and the method runs through
eval, train, learn and info."""

import copy
import json
import math
import re
import statistics

import pytest
import torch
from conftest import DEVICES, PLUMBING_BACKBONE, make_image_folder, requires_fashion_mnist
from safetensors.torch import save_file
from test_cli import edgecl, one_line_error

from edgecl.core.images import scan_class_folders
from edgecl.core.methods.inflora import InfLoraBackboneConfig
from edgecl.eval import fashion_mnist
from edgecl.host.backbones import create_backbone, preprocess_config
from edgecl.host.inflora_training import interference_ratios, train_session
from edgecl.host.subspace import SubspaceMemory


def session(classes):
    return [p for c in classes for p in c.images], [i for i, c in enumerate(classes) for _ in c.images]


@pytest.mark.parametrize("device", DEVICES)
def test_vit_sessions_merge_into_a_plain_model_and_fill_the_memory(tmp_path, device):
    classes = scan_class_folders(make_image_folder(tmp_path, ["red", "green", "blue", "yellow"], count=4))
    model, _ = create_backbone("test_vit", random_init=True)
    keys, sizes = list(model.state_dict()), {k: v.shape for k, v in model.state_dict().items()}
    config = InfLoraBackboneConfig(epochs=1, batch_size=4, lr=1e-2, sessions=2)
    memory = SubspaceMemory.from_config(config)
    protected = []
    for t, pair in enumerate([classes[:2], classes[2:]]):
        before = copy.deepcopy(model.state_dict())
        model, stats = train_session(
            model,
            memory,
            *session(pair),
            preprocess_config(model),
            config,
            session=t,
            device=device,
            show_progress=False,
        )
        assert set(model.state_dict()) == set(keys) and {k: v.shape for k, v in model.state_dict().items()} == sizes
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {f"blocks.{i}.attn.qkv.weight" for i in range(len(model.blocks))}
        assert stats["trainable_parameters"] == len(model.blocks) * 10 * 2 * model.num_features
        protected.append(stats["protected_fraction"])
    assert set(memory.bases) == {f"blocks.{i}.attn.qkv" for i in range(len(model.blocks))}
    assert 0 < protected[0] < protected[1] < 1


def test_a_session_with_no_free_direction_leaves_the_backbone_as_it_is(tmp_path):
    classes = scan_class_folders(make_image_folder(tmp_path, ["red", "green", "blue", "yellow"], count=4))
    model, _ = create_backbone("test_vit", random_init=True)
    config = InfLoraBackboneConfig(epochs=1, batch_size=4, lr=1e-2, sessions=2, max_leak=1e-12)  # no direction can pass
    memory = SubspaceMemory.from_config(config)
    model, first = train_session(
        model, memory, *session(classes[:2]), preprocess_config(model), config, session=0, show_progress=False
    )
    before = copy.deepcopy(model.state_dict())
    model, second = train_session(
        model, memory, *session(classes[2:]), preprocess_config(model), config, session=1, show_progress=False
    )
    assert first["final_loss"] is not None and first["directions"] == first["direction_slots"] == 10 * len(model.blocks)
    assert (
        second["final_loss"] is None
        and second["directions"] == 0
        and second["direction_slots"] == 10 * len(model.blocks)
    )
    assert second["trainable_parameters"] == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(memory.sessions.values()) == {2}  # the session's inputs still reach the memory
    assert second["protected_fraction"] > first["protected_fraction"]


@pytest.mark.slow
@requires_fashion_mnist
def test_a_later_session_moves_old_inputs_far_less_than_plain_lora(tmp_path, capsys):
    """Task 1: T-shirt/Trouser, task 2: Sneaker/Bag, 20 real images each, EfficientNet-Lite0.
    Per adapted layer: ||dW X_1|| / ||W X_1|| on task 1's inputs after task 2, plain LoRA / InfLoRA."""
    written = fashion_mnist.write_image_folders(tmp_path, "train", 20, classes=[0, 1, 7, 8], seed=0)
    names = list(written)
    task = lambda cs: ([p for c in cs for p in written[c]], [i for i, c in enumerate(cs) for _ in written[c]])  # noqa: E731
    model, _ = create_backbone()
    config = InfLoraBackboneConfig(epochs=2, batch_size=16)
    memories = {
        "default (contrast)": (SubspaceMemory.from_config(config), 0.95),
        "official design (projected)": (SubspaceMemory(design="projected"), 0.95),
    }
    plain_loss, measured = interference_ratios(
        model, task(names[:2]), task(names[2:]), preprocess_config(model), config, memories
    )
    with capsys.disabled():
        for kind, m in measured.items():
            adapted = [v for v in m.ratios.values() if math.isfinite(v)] or [math.inf]
            print(
                f"\nplain LoRA / InfLoRA, {kind}: output change on task-1 inputs "
                f"over the {len(adapted)} layers adapted: "
                f"min {min(adapted):.1f}x median {statistics.median(adapted):.1f}x max {max(adapted):.1f}x; "
                f"{m.directions} of 320 directions, "
                f"loss {m.final_loss:.3f} (plain LoRA {plain_loss:.3f})"
            )
    default, official = measured.values()
    assert len(default.ratios) == 32
    assert min(default.ratios.values()) >= 10  # the bar, every layer
    assert statistics.median(official.ratios.values()) >= 3 and min(official.ratios.values()) > 1.5
    assert (
        default.directions >= 20
    )  # still adapting (the layers it leaves alone have no direction free of the old inputs)
    assert default.final_loss < plain_loss + 0.05  # and learning task 2 about as well as plain LoRA


def test_eval_train_learn_and_info_with_inflora(tmp_path):
    root = tmp_path / "eval"
    names = ["red", "green", "blue", "yellow"]
    make_image_folder(root / "train", names, count=6)
    make_image_folder(root / "test", names, count=3, seed=50)
    report_file = tmp_path / "r.json"
    weights = tmp_path / "weights.safetensors"  # fixed random weights, so that a second eval finds the cache
    save_file(
        {k: v.contiguous() for k, v in create_backbone(PLUMBING_BACKBONE, random_init=True)[0].state_dict().items()},
        str(weights),
    )
    quick = [
        "--backbone",
        PLUMBING_BACKBONE,
        "--weights",
        weights,
        "--set",
        "backbone.epochs=1",
        "--set",
        "head_min_steps=0",
        "-q",
    ]
    result = edgecl(
        "eval", root, "--init", "2", "--increment", "1", "--method", "inflora,simplecil", *quick, "--json", report_file
    )
    assert result.exit_code == 0, result.stderr
    assert "inflora: backbone adapted in 3 sessions" in result.output
    assert re.search(r"low-rank directions \d+ / \d+ / \d+ of \d+", result.output)
    report = json.loads(report_file.read_text())
    runs = report["backbones"]["inflora"]["sessions"]
    assert [r["session"] for r in runs] == [0, 1, 2] and [r["images"] for r in runs] == [12, 6, 6]
    assert [r["threshold"] for r in runs] == pytest.approx([0.95, 0.95 + 0.05 / 3, 0.95 + 0.1 / 3], abs=1e-4)
    assert all(len(r["accuracy_per_session"]) == 3 for r in report["results"])
    again = edgecl(
        "eval",
        root,
        "--init",
        "2",
        "--increment",
        "1",
        "--method",
        "inflora",
        *quick,
        "--set",
        "projection=128",
        "--json",
        report_file,
    )
    assert again.exit_code == 0, again.stderr
    assert all(
        r.get("cached") for r in json.loads(report_file.read_text())["backbones"]["inflora"]["sessions"]
    )  # same backbone runs
    # the official per-session heads learn a session's classes against each other: one class alone is refused up front
    one_line_error(
        edgecl("eval", root, "--init", "2", "--increment", "1", "--method", "inflora", *quick, "--set", "heads=task"),
        "heads=task",
        "two or more classes",
    )
    task_heads = edgecl(
        "eval",
        root,
        "--init",
        "2",
        "--increment",
        "2",
        "--method",
        "inflora",
        *quick,
        "--set",
        "heads=task",
        "--json",
        report_file,
    )
    assert task_heads.exit_code == 0, task_heads.stderr
    assert len(json.loads(report_file.read_text())["accuracy_per_session"]) == 2

    bundle = tmp_path / "bundle"
    trained = edgecl("train", root / "train", "--out", bundle, "--method", "inflora", *quick)
    assert trained.exit_code == 0, trained.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backbone"]["inflora"]["images"] == 24 and "tuner" not in manifest["backbone"]
    assert (bundle / manifest["backbone"]["inflora"]["memory"]["file"]).is_file()
    new = make_image_folder(tmp_path / "new", ["grey", "purple"], count=5, seed=70)
    learned = edgecl("learn", "--bundle", bundle, "--images", new, "-q")
    assert learned.exit_code == 0, learned.stderr
    info = edgecl("info", "--bundle", bundle)
    assert (
        "inflora: 1 epoch on 24 images" in info.output and "inflora_memory.safetensors" in info.output
    )  # kept by learn
    assert "training images pass, each by its top probability" in info.output  # inflora keeps no class means
    before = json.loads((bundle / "manifest.json").read_text())["backbone"]
    more = make_image_folder(tmp_path / "more", ["red", "blue"], count=5, seed=90)
    (more / "red").rename(more / "crimson")
    (more / "blue").rename(more / "navy")
    adapted = edgecl("adapt", "--bundle", bundle, "--images", more, "-q")
    assert adapted.exit_code == 0, adapted.stderr
    assert "as session 2" in adapted.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    after = manifest["backbone"]
    assert after["sha256"] != before["sha256"]
    # the second backbone session (the device's learn session does not advance the memory's schedule)
    assert after["inflora"]["session"] == 1 and after["inflora"]["threshold"] == pytest.approx(0.955)
    assert after["inflora"]["protected_fraction"] > before["inflora"]["protected_fraction"]
    assert [s["classes"] for s in manifest["sessions"]][-1] == ["crimson", "navy"]
    assert sorted(
        p.name for p in bundle.iterdir() if p.suffix == ".safetensors" and p.name.startswith(("backbone", "inflora"))
    ) == sorted(
        {
            after["file"],
            after["inflora"]["memory"]["file"],
            *(
                f
                for past in manifest["history"]
                for f in (past["backbone"]["file"], past["backbone"]["inflora"]["memory"]["file"])
            ),
        }
    )  # the live ones, and those undo can restore
    assert manifest["history"][-1]["backbone"]["sha256"] == before["sha256"]
    classified = edgecl("classify", "--bundle", bundle, more / "navy", "--json", "-q")
    assert classified.exit_code == 0, classified.stderr
    assert len(json.loads(classified.stdout)) == 5


def test_adapt_needs_an_inflora_bundle(bundle, new_images):
    one_line_error(
        edgecl("adapt", "--bundle", bundle, "--images", new_images, "-q"), "keeps the backbone fixed", "edgecl learn"
    )


def test_inflora_settings_are_checked(tmp_path):
    for setting, fragment in (
        ("backbone.layers=mlp", "unknown layer set"),
        ("heads=knn", "heads=knn"),
        ("backbone.energy_power=3", "energy_power"),
        ("backbone.design=svd", "backbone.design=svd"),
        ("backbone.max_leak=0", "max_leak > 0"),
    ):
        one_line_error(
            edgecl("eval", tmp_path, "--init", "2", "--increment", "1", "--method", "inflora", "--set", setting),
            fragment,
        )
