import math

import torch

from edgecl.core.layers import (
    CosineClassifier,
    LuCA,
    LuCAStack,
    class_balance,
    class_means,
    entropy,
    power_normalize,
    whitening_of,
)


def test_luca_has_the_paper_parameter_count_for_768_and_48():
    assert sum(p.numel() for p in LuCA(768, 48).parameters()) == 149_808


def test_luca_shapes_and_structure():
    luca = LuCA(1280, 48)
    assert luca.down.bias is not None and luca.up.bias is not None
    assert luca.squeeze.bias is None and luca.excite.bias is None
    out = luca(torch.randn(5, 1280))
    assert out.shape == (5, 1280)


def test_luca_forward_is_adapter_then_calibrator():
    torch.manual_seed(0)
    luca = LuCA(16, 4)
    luca.reset_parameters(torch.Generator().manual_seed(1))
    x = torch.randn(3, 16)
    h = torch.nn.functional.layer_norm(x + luca.up(torch.nn.functional.gelu(luca.down(x))), (16,))
    expected = h * torch.sigmoid(luca.excite(torch.relu(luca.squeeze(h))))
    torch.testing.assert_close(luca(x), expected)


def test_luca_reset_is_seeded_xavier_with_zero_bias():
    a, b = LuCA(64, 8), LuCA(64, 8)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    bound = math.sqrt(6 / (64 + 8))
    assert a.down.weight.abs().max() <= bound and a.down.weight.abs().max() > bound / 2
    assert torch.count_nonzero(a.down.bias) == 0


def test_l1_is_the_sum_of_absolute_weights():
    luca = LuCA(8, 2)
    assert torch.isclose(luca.l1(), sum(p.abs().sum() for p in luca.parameters()))


def test_cosine_classifier_scales_cosines_and_grows():
    clf = CosineClassifier(4, 0, sigma=2.0)
    clf.add_classes(torch.tensor([[1.0, 0, 0, 0], [0, 3.0, 0, 0]]))
    assert clf.num_classes == 2
    logits = clf(torch.tensor([[5.0, 0, 0, 0], [1.0, 1.0, 0, 0]]))
    torch.testing.assert_close(logits, 2.0 * torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]]))
    clf.add_classes(torch.tensor([[0, 0, 1.0, 0]]))
    assert clf(torch.randn(2, 4)).shape == (2, 3)
    assert clf.sigma.requires_grad


def test_class_means_and_entropy():
    features = torch.tensor([[1.0, 0], [3.0, 0], [0, 2.0]])
    torch.testing.assert_close(class_means(features, torch.tensor([0, 0, 1]), 2), torch.tensor([[2.0, 0], [0, 2.0]]))
    assert torch.isclose(entropy(torch.zeros(1, 4))[0], torch.tensor(math.log(4)))
    assert entropy(torch.tensor([[100.0, 0, 0]]))[0] < 1e-6


def test_whitening_of_flattens_the_covariance_and_shrinks_its_weak_directions():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3
    centre, whitening = whitening_of(features, 0.0)
    torch.testing.assert_close(centre, features.mean(0))
    torch.testing.assert_close(whitening, whitening.T)
    torch.testing.assert_close(torch.cov(((features - centre) @ whitening).T), torch.eye(6), atol=1e-4, rtol=0)
    _, shrunk = whitening_of(features, 1.0)
    spread = torch.linalg.eigvalsh(torch.cov(((features - centre) @ shrunk).T))
    assert (spread < 1).all() and (spread > 0).all()
    one = whitening_of(features[:1], 1.0)[1]  # a first session of one image still gives finite numbers
    assert torch.isfinite(one).all()


def test_power_normalize_keeps_signs_and_zeros():
    features = torch.tensor([[4.0, -9.0, 0.0, 0.25]])
    assert torch.equal(power_normalize(features, 0.5), torch.tensor([[2.0, -3.0, 0.0, 0.5]]))
    assert power_normalize(features, 1.0) is features


def test_all_modules_at_once_equal_each_module_alone():
    modules = [LuCA(32, 6) for _ in range(4)]
    for seed, module in enumerate(modules):
        module.reset_parameters(torch.Generator().manual_seed(seed))
        torch.nn.init.normal_(module.norm.weight, generator=torch.Generator().manual_seed(10 + seed))
    stack = LuCAStack(32, 6)
    for module in modules:
        stack.append(module)
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(stack(x), torch.stack([m(x) for m in modules]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stack.module(2)(x), modules[2](x))
    assert len(stack) == 4 and len(LuCAStack(32, 6, sessions=3)) == 3


def test_class_balance_needs_every_count():
    assert class_balance(torch.tensor([10.0, 40.0]), 0.0) is None
    unknown = class_balance(torch.tensor([10.0, 0.0]), 0.5)  # a class of heads that kept no counts
    assert torch.equal(unknown, torch.ones(2))
    torch.testing.assert_close(class_balance(torch.tensor([10.0, 40.0]), 0.5), torch.tensor([2.5**0.5, 0.625**0.5]))
