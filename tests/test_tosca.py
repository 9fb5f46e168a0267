"""TOSCA's training as the official code does it (`tosca-paper`) and as edgecl's `tosca` keeps it."""

import math

import pytest
import torch

from edgecl.core.methods import create_method, restore_method
from edgecl.core.methods import tosca as tosca_module
from edgecl.core.methods.interface import method_config
from edgecl.core.methods.tosca import ToscaPaperConfig
from edgecl.core.sgd import MomentumSGD, SGDSchedule, cosine_lr
from edgecl.errors import EdgeclError

DIM = 64


def clustered(num_classes: int, per_class: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(offset + num_classes, DIM, generator=torch.Generator().manual_seed(99)) * 3
    targets = torch.arange(offset, offset + num_classes).repeat_interleave(per_class)
    return centres[targets] + 0.3 * torch.randn(
        len(targets), DIM, generator=torch.Generator().manual_seed(offset)
    ), targets


def rows_and_modules_before_training(name: str, monkeypatch) -> list[dict]:
    """Two sessions of `name`; for each, what the classifier and the LuCA module were when training began."""
    seen = []

    def spy(params, *args, **kwargs):
        *module, weight, _sigma = params
        seen.append({"rows": weight.detach().clone(), "module": [p.detach().clone() for p in module]})
        return float("nan")

    monkeypatch.setattr(tosca_module, "train_minibatches", spy)
    monkeypatch.setattr(tosca_module, "train_epoch_cosine", spy, raising=False)
    method = create_method(name, DIM)
    g = torch.Generator().manual_seed(0)
    for offset in (0, 2):
        method.learn(*clustered(2, 20, offset), g, show_progress=False)
        # training skipped: the rows set afterwards are the untrained module's prototypes
        seen[-1]["after"] = method.classifier.weight.detach().clone()
    return seen


def test_tosca_paper_starts_rows_random_then_zero_not_at_prototypes(monkeypatch):
    first, second = rows_and_modules_before_training("tosca-paper", monkeypatch)
    bound = 1 / math.sqrt(DIM)
    # session 0: the cosine classifier's own uniform init, not prototypes (which are ~unit-variance LayerNorm outputs)
    assert first["rows"].shape == (2, DIM)
    assert first["rows"].abs().max() <= bound and first["rows"].abs().min() > 0
    assert first["rows"].std() == pytest.approx(bound / math.sqrt(3), rel=0.25)
    assert (first["rows"] - first["after"]).abs().max() > 0.5
    # session 1: old rows are session 0's prototypes, the new rows start at zero
    torch.testing.assert_close(second["rows"][:2], first["after"])
    assert torch.equal(second["rows"][2:], torch.zeros(2, DIM))


def test_tosca_keeps_rows_at_the_untrained_modules_prototypes(monkeypatch):
    first, second = rows_and_modules_before_training("tosca", monkeypatch)
    # with training skipped, the prototypes set afterwards are those of the untrained module
    torch.testing.assert_close(first["rows"], first["after"])
    torch.testing.assert_close(second["rows"], second["after"])


def test_tosca_paper_keeps_pytorch_init_in_session_0_and_xavier_later(monkeypatch):
    first, second = rows_and_modules_before_training("tosca-paper", monkeypatch)
    down_w, down_b = first["module"][0], first["module"][1]  # LuCA.down: (bottleneck, DIM) and its bias
    assert down_w.shape == (DIM // 16, DIM)
    assert down_w.abs().max() <= 1 / math.sqrt(DIM) and down_b.abs().min() > 0  # nn.Linear's default
    later_w, later_b = second["module"][0], second["module"][1]
    assert torch.equal(later_b, torch.zeros_like(later_b))
    assert later_w.abs().max() > 1 / math.sqrt(DIM)  # xavier's bound sqrt(6 / (DIM + 4)) is wider
    assert later_w.abs().max() <= math.sqrt(6 / (DIM + DIM // 16))


def test_bottleneck_is_the_width_over_16_for_tosca_paper_only():
    assert create_method("tosca-paper", 1280).bottleneck == 80
    assert create_method("tosca-paper", 768).bottleneck == 48
    assert create_method("tosca", 1280).bottleneck == 48
    assert create_method("tosca-paper", 1280, bottleneck_ratio=0, bottleneck=32).bottleneck == 32


def test_epoch_cosine_matches_torch_sgd_with_cosine_annealing_stepped_per_epoch():
    from edgecl.core.methods.tosca import train_epoch_cosine

    schedule = SGDSchedule(epochs=5, batch_size=8, lr=0.1, min_lr=1e-8, momentum=0.9)
    x, y = torch.randn(30, 6, generator=torch.Generator().manual_seed(1)), torch.randn(30, 1)
    start = torch.randn(6, 1, generator=torch.Generator().manual_seed(2))
    ours = torch.nn.Parameter(start.clone())
    train_epoch_cosine(
        [ours],
        lambda b: ((x[b] @ ours - y[b]) ** 2).mean(),
        30,
        schedule,
        torch.Generator().manual_seed(3),
        description="",
        show_progress=False,
    )
    theirs = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([theirs], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5, eta_min=1e-8)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for b in torch.randperm(30, generator=g).split(8):
            optimizer.zero_grad()
            ((x[b] @ theirs - y[b]) ** 2).mean().backward()
            optimizer.step()
        scheduler.step()
    torch.testing.assert_close(ours, theirs)


def test_tosca_paper_holds_the_rate_through_an_epoch(monkeypatch):
    rates = []
    step = MomentumSGD.step
    monkeypatch.setattr(MomentumSGD, "step", lambda self, lr: (rates.append(lr), step(self, lr))[1])
    method = create_method("tosca-paper", DIM, epochs=4)
    method.learn(*clustered(2, 30), torch.Generator().manual_seed(0), show_progress=False)  # 2 batches of 48 per epoch
    assert rates == [cosine_lr(e, 4, 0.025, 1e-8) for e in range(4) for _ in range(2)]


def test_old_tosca_paper_bundles_keep_their_shape_and_training():
    old = {
        k: v
        for k, v in ToscaPaperConfig().to_dict().items()
        if k not in ("bottleneck_ratio", "row_init", "first_module_init", "lr_per_epoch")
    }
    config = ToscaPaperConfig.from_dict(old)
    assert (config.bottleneck_ratio, config.row_init, config.first_module_init, config.lr_per_epoch) == (
        0,
        "prototypes",
        "xavier",
        False,
    )
    method = create_method("tosca-paper", DIM, old)
    method.learn(*clustered(2, 10), torch.Generator().manual_seed(0), show_progress=False)
    assert method.sessions.down_weight.shape == (1, 48, DIM)
    restored = restore_method("tosca-paper", DIM, old, method.structure(), method.state_dict())
    features, _ = clustered(2, 3)
    torch.testing.assert_close(restored.predict(features), method.predict(features))


def test_unknown_row_init_is_a_user_error():
    with pytest.raises(EdgeclError, match="row_init='zeros': must be one of prototypes, official"):
        method_config("tosca", settings={"row_init": "zeros"})
    assert method_config("edgecl", settings={"tosca.row_init": "official"}).tosca.row_init == "official"
