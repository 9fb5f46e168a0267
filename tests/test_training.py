import math

import pytest
import torch

from edgecl.core.sgd import MomentumSGD, SGDSchedule, train_minibatches


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.9, 5e-4), (0.0, 0.0)])
def test_momentum_sgd_matches_torch_optim_sgd(momentum, weight_decay):
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    theirs.load_state_dict(ours.state_dict())
    mine = MomentumSGD(list(ours.parameters()), momentum, weight_decay)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(5):
        x = torch.randn(4, 6)
        for model in (ours, theirs):
            model(x).pow(2).sum().backward()
        lr = 0.1 / (step + 1)
        for group in reference.param_groups:
            group["lr"] = lr
        mine.step(lr)
        reference.step()
        mine.zero_grad()
        reference.zero_grad()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_schedule_is_cosine_to_min_lr_and_loss_goes_down():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(2))
    target = torch.tensor([1.0, -2.0])
    seen = []
    schedule = SGDSchedule(epochs=40, batch_size=4, lr=0.1, min_lr=0.0, momentum=0.9)

    def loss(batch):
        seen.append(len(batch))
        return (w - target).pow(2).sum()

    final = train_minibatches([w], loss, 8, schedule, torch.Generator().manual_seed(0), show_progress=False)
    assert seen == [4, 4] * 40
    assert final < 1e-2 and torch.allclose(w, target, atol=0.1)
    assert math.isclose(schedule.epochs_for(8), 40)


def test_heads_train_on_one_thread_and_the_count_comes_back_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w = torch.nn.Parameter(torch.zeros(2))
        threads = []

        def loss(batch):
            threads.append(torch.get_num_threads())
            if len(threads) == 3:
                raise RuntimeError("a loss that fails halfway")
            return w.pow(2).sum()

        train_minibatches(
            [w], loss, 4, SGDSchedule(epochs=1, batch_size=2), torch.Generator().manual_seed(0), show_progress=False
        )
        assert threads == [1, 1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="fails halfway"):
            train_minibatches(
                [w], loss, 4, SGDSchedule(epochs=1, batch_size=2), torch.Generator().manual_seed(0), show_progress=False
            )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
