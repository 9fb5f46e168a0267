"""The method interface, exercised the same way for every registered method."""

import pytest
import torch

from edgecl.core.layers import whitening_of
from edgecl.core.methods import METHODS, create_method, restore_method
from edgecl.core.methods.edgecl import WHITEN_MIN_CLASSES, WHITEN_SHRINK
from edgecl.core.methods.interface import method_config
from edgecl.core.methods.safe import SlowLearnerConfig
from edgecl.core.sgd import SGDSchedule
from edgecl.errors import EdgeclError

DIM = 32


def clustered(num_classes: int, per_class: int, offset: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian clusters, one per class, around seeded random centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(offset + num_classes, DIM, generator=torch.Generator().manual_seed(99)) * 3
    targets = torch.arange(offset, offset + num_classes).repeat_interleave(per_class)
    return centres[targets] + 0.3 * torch.randn(len(targets), DIM, generator=g), targets


def fast(name: str):
    """Short schedules: these tests are about behaviour, not accuracy."""
    return (
        create_method(name, DIM, epochs=3, min_steps=60, projection=256)
        if name != "simplecil"
        else create_method(name, DIM)
    )


def learn_sessions(method, sessions=((0, 3), (3, 2), (5, 2))):
    g = torch.Generator().manual_seed(0)
    for offset, count in sessions:
        features, targets = clustered(count, 20, offset, seed=offset)
        method.learn(features, targets, g, show_progress=False)
    return method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_learns_separable_classes_across_sessions(name):
    method = learn_sessions(fast(name))
    assert method.num_classes == 7
    features, targets = clustered(7, 10, seed=123)
    accuracy = (method.predict(features).argmax(1) == targets).float().mean().item()
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_round_trip_gives_the_same_predictions(name):
    method = learn_sessions(fast(name))
    restored = restore_method(name, DIM, method.config.to_dict(), method.structure(), method.state_dict())
    features, _ = clustered(7, 4, seed=5)
    torch.testing.assert_close(restored.predict(features), method.predict(features), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["edgecl", "safe", "simplecil", "tosca"])
def test_class_statistics_missing_altogether_are_an_old_bundle_and_in_part_a_damaged_one(name):
    method = learn_sessions(fast(name))
    state = method.state_dict()
    kept = [k for k in state if k.rpartition(".")[2] in ("class_count", "class_similarity")]
    group = [k for k in kept if k.rpartition(".")[0] == kept[0].rpartition(".")[0]]  # one module's statistics
    old = {k: v for k, v in state.items() if k not in group}  # written before they were kept
    restored = restore_method(name, DIM, method.config.to_dict(), method.structure(), old)
    assert all(not restored.state_dict()[k].any() for k in group)
    if len(group) > 1:
        damaged = {k: v for k, v in state.items() if k != group[-1]}
        with pytest.raises(RuntimeError, match="Missing key"):
            restore_method(name, DIM, method.config.to_dict(), method.structure(), damaged)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_predictions_do_not_depend_on_the_batch(name):
    method = learn_sessions(fast(name))
    features, _ = clustered(7, 6, seed=7)
    together = method.predict(features)
    alone = torch.cat([method.predict(features[i : i + 1]) for i in range(len(features))])
    assert torch.equal(together.argmax(1), alone.argmax(1))
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_empty_batch_predicts_nothing(name):
    """classify of a folder whose images are all unreadable reaches the heads with no rows."""
    method = learn_sessions(fast(name))
    assert method.predict(torch.zeros(0, DIM)).shape == (0, method.num_classes)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_new_classes_must_continue_the_numbering(name):
    method = learn_sessions(fast(name), sessions=((0, 2),))
    features, targets = clustered(2, 5, offset=3)
    with pytest.raises(ValueError, match="numbered 2"):
        method.learn(features, targets, torch.Generator(), show_progress=False)


def test_tosca_picks_the_module_per_sample_not_per_batch():
    tosca = learn_sessions(fast("tosca"), sessions=((0, 3), (3, 3)))
    features, targets = clustered(6, 5, seed=11)
    per_module = tosca.session_logits(features)
    entropies = -(per_module.softmax(-1) * per_module.log_softmax(-1)).sum(-1)
    chosen = entropies.argmin(0)
    assert set(chosen.tolist()) == {0, 1}, "the mixed batch should use both modules"
    torch.testing.assert_close(tosca.logits(features), per_module[chosen, torch.arange(len(features))])
    # a sample's logits do not change when its batch-mates come from the other session
    first = targets < 3
    own_session = tosca.logits(features[first])
    mixed = tosca.logits(torch.cat([features[first], features[~first]]))[: int(first.sum())]
    torch.testing.assert_close(mixed, own_session, rtol=0, atol=1e-6)


def test_tosca_sets_new_rows_to_prototypes_after_training():
    tosca = learn_sessions(fast("tosca"), sessions=((0, 3),))
    features, targets = clustered(3, 20, 0, seed=0)
    with torch.no_grad():
        prototypes = torch.stack([tosca.sessions.module(0)(features[targets == c]).mean(0) for c in range(3)])
    torch.testing.assert_close(tosca.classifier.weight.data, prototypes, rtol=1e-5, atol=1e-5)


def test_each_module_has_prototypes_of_every_class():
    tosca = learn_sessions(fast("tosca"))
    assert tosca.module_rows.shape == (3, 7, DIM)
    features, targets = clustered(2, 20, 5, seed=5)  # the last session's data
    with torch.no_grad():
        first_module_view = torch.stack([tosca.sessions.module(0)(features[targets == c]).mean(0) for c in (5, 6)])
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(tosca.module_rows[0, 5:], unit(first_module_view, dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tosca.module_rows[2], unit(tosca.classifier.weight.data, dim=-1))


def test_replay_keeps_old_classes_through_one_class_sessions():
    """With nothing but the new class in its data, a module learns 'everything is new' unless old
    classes are replayed from their stored statistics."""
    results = {}
    for name in ("tosca", "tosca-paper"):
        method = learn_sessions(fast(name), sessions=((0, 3), (3, 1), (4, 1), (5, 1)))
        features, targets = clustered(6, 10, seed=21)
        results[name] = (method.predict(features).argmax(1) == targets).float().mean().item()
    assert results["tosca"] >= 0.95, results
    stored = learn_sessions(fast("tosca"), ((0, 2),))
    features, _ = clustered(2, 20, 0, seed=0)
    torch.testing.assert_close(stored.class_mean, features.view(2, 20, DIM).mean(1))
    torch.testing.assert_close(stored.class_var, features.view(2, 20, DIM).var(1, unbiased=False), rtol=1e-4, atol=1e-4)


def test_min_steps_raises_epochs_for_small_sessions_only():
    schedule = SGDSchedule(epochs=20, batch_size=48, min_steps=400)
    assert schedule.epochs_for(50) == 200  # 2 steps per epoch
    assert schedule.epochs_for(10_000) == 20


def test_edgecl_floors_its_steps_at_100_and_a_stored_floor_is_kept():
    method = create_method("edgecl", DIM)
    # 50 images in batches of 48: 2 steps per epoch, so 50 epochs make the 100 steps
    assert method.tosca.config.schedule().epochs_for(50) == method.safe.config.schedule().epochs_for(50) == 50
    assert method_config("tosca").min_steps == method_config("safe").min_steps == 400  # the methods alone keep theirs
    stored = method_config("edgecl", settings={"tosca.min_steps": "400", "safe.min_steps": "400"}).to_dict()
    restored = method_config("edgecl", stored)
    assert restored.tosca.min_steps == restored.safe.min_steps == 400
    assert method_config("edgecl", stored, settings={"tosca.lr": "0.01"}).tosca.min_steps == 400
    # a stored config that names some settings of a group (or none of the group) keeps the floor of its time
    partial = method_config("edgecl", {"tosca": {"lr": 0.01}, "safe": {"projection": 256}})
    assert (partial.tosca.lr, partial.tosca.min_steps, partial.safe.min_steps) == (0.01, 400, 400)
    assert method_config("edgecl", {}).tosca.min_steps == 400


def test_unknown_method_and_setting_are_user_errors():
    with pytest.raises(EdgeclError, match="unknown method"):
        create_method("nope", DIM)
    with pytest.raises(EdgeclError, match="unknown setting"):
        create_method("tosca", DIM, {"bottlenek": 3})
    with pytest.raises(
        EdgeclError, match=r"^settings safe=1: safe is a group of settings; set one of them \(safe.projection, "
    ):
        method_config("edgecl", settings={"safe": "1"})
    with pytest.raises(
        EdgeclError,
        match=r"^settings safe.slow=5: safe.slow is a group of settings; set one of them \(safe.slow.tuner, ",
    ):
        method_config("edgecl", settings={"safe.slow": "5"})
    with pytest.raises(EdgeclError, match=r"^settings safe.slow.epochs=many: not a valid int"):
        method_config("edgecl", settings={"safe.slow.epochs": "many"})
    with pytest.raises(EdgeclError, match=r"^settings use_tosca=maybe: not a valid bool"):
        method_config("edgecl", settings={"use_tosca": "maybe"})
    assert method_config("edgecl", settings={"use_tosca": "Off"}).use_tosca is False
    for key, text, bound in [
        ("safe.slow.epochs", "-3", "0 or more"),
        ("tosca.lr", "nan", "above 0"),
        ("safe.projection", "0", "above 0"),
    ]:
        with pytest.raises(EdgeclError, match=rf"^settings {key}={text}: .*={text}: must be a number {bound}"):
            method_config("edgecl", settings={key: text})
    for stored in ({"safe": {"projection": True}}, {"tosca": {"lr": False}}, {"temperature": True}):
        with pytest.raises(EdgeclError, match=r"=(True|False): must be a number"):  # a bundle's config, edited
            method_config("edgecl", stored)
    with pytest.raises(EdgeclError, match="^settings safe.fast=bogus: fast=bogus: must be one of luca, scale_shift"):
        method_config("edgecl", settings={"safe.fast": "bogus"})
    assert method_config("edgecl", settings={"safe.slow.epochs": "3"}).safe.slow.epochs == 3
    with pytest.raises(
        EdgeclError,
        match=r"^settings slow.epochs: method edgecl has no setting 'slow' .*; did you mean safe.slow.epochs\?",
    ):
        method_config("edgecl", settings={"slow.epochs": "3"})
    with pytest.raises(EdgeclError, match=r"^settings safe.nope: safe has no setting 'nope' \(known: projection, "):
        method_config("edgecl", settings={"safe.nope": "3"})
    with pytest.raises(
        EdgeclError, match="^settings use_slow=false: edgecl needs at least one of use_tosca, use_fast, use_slow"
    ):
        method_config("edgecl", settings={"use_tosca": "false", "use_fast": "false", "use_slow": "false"})


def test_bundles_written_with_the_flat_slow_learner_settings_still_load():
    config = method_config(
        "edgecl", {"safe": {"slow_epochs": 3, "slow_tuner": "adaptformer", "slow_rdn": 10.0, "gamma": 2.0}}
    )
    assert config.safe.slow == SlowLearnerConfig(tuner="adaptformer", epochs=3, l_rdn=10.0) and config.safe.gamma == 2.0
    assert method_config("safe", {"slow_epochs": 0}).slow_learner() is None


def test_edgecl_scores_are_the_blend_at_its_temperature_and_old_bundles_keep_theirs():
    method = learn_sessions(fast("edgecl"))
    features, _ = clustered(7, 4, seed=5)
    logits = method.logits(features)
    torch.testing.assert_close(method.predict(features), torch.softmax(logits / 3.0, dim=-1))
    assert torch.equal(method.predict(features).argmax(1), logits.argmax(1))
    # written before the settings: the scores at temperature 1, the heads on the embedding as it is
    stored = {k: v for k, v in method.config.to_dict().items() if k not in ("temperature", "feature_power")}
    old = restore_method("edgecl", DIM, stored, method.structure(), method.state_dict())
    assert (old.config.temperature, old.config.feature_power) == (1.0, 1.0)
    raw = create_method("edgecl", DIM, method.config.to_dict(), feature_power=1.0, temperature=1.0)
    raw.build(method.structure())
    raw.load_state_dict(method.state_dict())
    torch.testing.assert_close(old.predict(features), raw.predict(features), rtol=0, atol=0)


def test_edgecl_heads_learn_and_classify_the_power_normalised_embedding():
    def sessions(method, transform):
        g = torch.Generator().manual_seed(0)
        for offset, count in ((0, 3), (3, 2)):
            features, targets = clustered(count, 20, offset, seed=offset)
            method.learn(transform(features), targets, g, show_progress=False)
        return method

    settings = dict(epochs=3, min_steps=60, projection=256)
    powered = sessions(create_method("edgecl", DIM, **settings, feature_power=0.5), lambda f: f)
    by_hand = sessions(create_method("edgecl", DIM, **settings, feature_power=1.0), lambda f: f.sign() * f.abs().sqrt())
    features, _ = clustered(5, 4, seed=5)
    torch.testing.assert_close(powered.logits(features), by_hand.logits(features.sign() * features.abs().sqrt()))
    assert not torch.allclose(powered.logits(features), by_hand.logits(features))


def test_edgecl_chooses_the_power_from_the_first_session_and_keeps_it():
    g = torch.Generator().manual_seed(0)
    signed, targets = clustered(3, 10)
    for features, chosen in ((signed, 1.0), (signed.abs(), 0.5)):
        method = fast("edgecl")
        assert method.config.feature_power is None
        method.learn(features, targets, g, show_progress=False)
        more, more_targets = clustered(2, 10, offset=3, seed=1)
        method.learn(-more.abs() if chosen == 0.5 else more.abs(), more_targets, g, show_progress=False)
        assert method.feature_power == chosen  # the later session, of the other sign, changes nothing
        restored = restore_method("edgecl", DIM, method.config.to_dict(), method.structure(), method.state_dict())
        assert restored.feature_power == chosen
        torch.testing.assert_close(restored.logits(features), method.logits(features), rtol=0, atol=0)
    # heads whose structure predates the choice keep the configured power
    configured = create_method("edgecl", DIM, feature_power=0.5)
    configured.build({k: v for k, v in method.structure().items() if k != "feature_power"})
    assert configured.feature_power == 0.5


def test_edgecl_whitens_a_signed_embedding_with_its_first_sessions_statistics():
    settings = dict(epochs=3, min_steps=60, projection=256)
    first, first_targets = clustered(WHITEN_MIN_CLASSES, 20)
    later, later_targets = clustered(2, 20, offset=WHITEN_MIN_CLASSES, seed=3)
    centre, whitening = whitening_of(first, WHITEN_SHRINK)

    def sessions(method, transform, classes=WHITEN_MIN_CLASSES):
        g = torch.Generator().manual_seed(0)
        kept, shifted = first_targets < classes, later_targets - WHITEN_MIN_CLASSES + classes
        for features, targets in ((first[kept], first_targets[kept]), (later, shifted)):
            method.learn(transform(features), targets, g, show_progress=False)
        return method

    auto = method_config("edgecl").to_dict()
    assert auto["whiten"] is None  # the default: where the embedding is signed and the first session large enough
    whitened = sessions(create_method("edgecl", DIM, auto, **settings), lambda f: f)
    assert whitened.whiten and whitened.feature_power == 1.0
    torch.testing.assert_close(whitened.state_dict()["centre"], first.mean(0))
    few = sessions(create_method("edgecl", DIM, auto, **settings), lambda f: f, classes=WHITEN_MIN_CLASSES - 1)
    assert few.whiten is False and few.feature_power == 1.0 and "centre" not in few.state_dict()
    assert sessions(create_method("edgecl", DIM, **settings, whiten=True), lambda f: f, classes=2).whiten
    plain = create_method("edgecl", DIM, **settings, whiten=False)
    by_hand = sessions(plain, lambda f: (f - centre) @ whitening)
    features, _ = clustered(5, 4, seed=5)
    torch.testing.assert_close(whitened.logits(features), by_hand.logits((features - centre) @ whitening))
    torch.testing.assert_close(whitened.known_scores(features), by_hand.known_scores((features - centre) @ whitening))
    targets = torch.arange(5).repeat_interleave(4)  # the threshold's calibration sees the same space
    torch.testing.assert_close(
        whitened.held_out_known_scores(features, targets),
        by_hand.held_out_known_scores((features - centre) @ whitening, targets),
    )
    restored = restore_method("edgecl", DIM, whitened.config.to_dict(), whitened.structure(), whitened.state_dict())
    torch.testing.assert_close(restored.logits(features), whitened.logits(features), rtol=0, atol=0)
    # a non-negative embedding (a CNN's pooled features) is not whitened and keeps no tensors for it
    pooled = sessions(create_method("edgecl", DIM, auto, **settings), lambda f: f.abs())
    assert pooled.whiten is False and "centre" not in pooled.state_dict()
    forced = sessions(create_method("edgecl", DIM, **settings, whiten=True), lambda f: f.abs())
    assert forced.whiten and "whitening" in forced.state_dict()
    # heads written before the setting see the embedding as they did
    stored = {k: v for k, v in pooled.config.to_dict().items() if k != "whiten"}
    assert restore_method("edgecl", DIM, stored, pooled.structure(), pooled.state_dict()).config.whiten is False
    with pytest.raises(ValueError, match="whiten"):
        restore_method("edgecl", DIM, stored, {**whitened.structure(), "whiten": 1}, whitened.state_dict())
    # the flag and the tensors must agree: either way round the state does not load
    with pytest.raises(RuntimeError, match="centre"):
        restore_method("edgecl", DIM, stored, {**pooled.structure(), "whiten": True}, pooled.state_dict())
    with pytest.raises(RuntimeError, match="whitening"):
        restore_method("edgecl", DIM, stored, {**whitened.structure(), "whiten": False}, whitened.state_dict())


def test_edgecl_feature_power_settings():
    config = method_config("edgecl", {})
    assert config.setting("feature_power", "1").feature_power == 1.0
    assert config.setting("feature_power", "1").setting("feature_power", "auto").feature_power is None
    assert config.setting("whiten", "false").setting("whiten", "AUTO").whiten is None
    with pytest.raises(EdgeclError, match="whiten=none: not a valid bool"):  # "none" is not "off", nor "auto"
        config.setting("whiten", "none")
    for text in ("0", "-1", "nan"):
        with pytest.raises(EdgeclError, match="feature_power"):
            config.setting("feature_power", text)
    with pytest.raises(EdgeclError, match="feature_power=x: not a valid float"):
        config.setting("feature_power", "x")


@pytest.mark.parametrize("name", ["safe", "edgecl"])
def test_slow_analytic_columns_are_weighed_by_class_size(name):
    g = torch.Generator().manual_seed(0)
    balanced = fast(name)
    for offset, count, per_class in ((0, 3, 30), (3, 2, 3)):
        features, targets = clustered(count, per_class, offset, seed=offset)
        balanced.learn(features, targets, g, show_progress=False)
    counts = balanced.safe.class_count if name == "edgecl" else balanced.class_count
    assert counts.tolist() == [30, 30, 30, 3, 3]
    plain = restore_method(
        name, DIM, balanced.config.override(class_balance=0.0).to_dict(), balanced.structure(), balanced.state_dict()
    )
    weights = (counts.mean() / counts).pow(0.75)
    features, _ = clustered(5, 4, seed=5)
    members, plain_members = ((m.safe if name == "edgecl" else m).member_logits(features) for m in (balanced, plain))
    torch.testing.assert_close(members["slow"], plain_members["slow"] * weights)
    torch.testing.assert_close(members["fast"], plain_members["fast"], rtol=0, atol=0)  # its features drift
    # a bundle written before the setting keeps the plain ridge solution
    stored = balanced.config.to_dict()
    (stored["safe"] if name == "edgecl" else stored).pop("class_balance")
    old = restore_method(name, DIM, stored, balanced.structure(), balanced.state_dict())
    torch.testing.assert_close(old.logits(features), plain.logits(features), rtol=0, atol=0)


@pytest.mark.parametrize("power", [0, -1, float("nan"), "0.5", True])
def test_edgecl_refuses_a_stored_power_that_is_not_a_number_above_0(power):
    method = learn_sessions(fast("edgecl"), sessions=((0, 3),))
    with pytest.raises(ValueError, match="feature_power"):
        restore_method(
            "edgecl", DIM, method.config.to_dict(), {**method.structure(), "feature_power": power}, method.state_dict()
        )


def test_class_balance_is_bounded():
    with pytest.raises(EdgeclError, match="class_balance=3.0: must be at most 2"):
        method_config("safe", {}).setting("class_balance", "3")


def test_each_slow_epochs_setting_names_the_slow_learners_epochs():
    having = {name: cls.slow_epochs_setting for name, cls in METHODS.items() if cls.slow_epochs_setting}
    assert sorted(having) == ["edgecl", "safe"]
    for name, setting in having.items():
        assert method_config(name, settings={setting: "7"}).slow_learner().epochs == 7
