"""Upper references for a continual learner on a frozen backbone: classifiers that see every class
at once, on the same embeddings. `edgecl eval --joint` reports them next to the methods."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgecl.core.analytic import PROJECTION, AnalyticClassifier
from edgecl.core.layers import class_means


def _accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == labels).mean())


def logistic_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, decay: float, steps: int = 200
) -> torch.nn.Linear:
    """Multinomial logistic regression with L2, full batch, L-BFGS (host side, so torch.optim is fine)."""
    probe = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def joint_bounds(
    train, test, *, seed: int = 0, projection: int = PROJECTION, show_progress: bool = True
) -> dict[str, float]:
    """Test accuracy of NCM, a logistic probe (L2 picked on a held-out 20%) and the analytic
    classifier (M=`projection`, lambda picked likewise), each trained on all classes at once."""
    x, y = train.features.float(), torch.from_numpy(train.labels)
    classes = int(y.max()) + 1
    mean, std = x.mean(0), x.std(0) + 1e-6
    scaled, test_scaled = (x - mean) / std, (test.features.float() - mean) / std
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fit, held = order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]
    decays = (1e-5, 1e-4, 1e-3, 1e-2)
    scores = [
        _accuracy(logistic_probe(scaled[fit], y[fit], classes, d)(scaled[held]).detach(), y[held].numpy())
        for d in decays
    ]
    probe = logistic_probe(scaled, y, classes, decays[int(np.argmax(scores))])
    prototypes = F.normalize(class_means(x, y, classes), dim=-1)
    analytic = AnalyticClassifier(x.shape[1], projection, seed)
    analytic.add(x[order], y[order], classes)
    with torch.no_grad():
        return {
            "ncm": _accuracy(F.normalize(test.features.float(), dim=-1) @ prototypes.T, test.labels),
            "probe": _accuracy(probe(test_scaled), test.labels),
            f"analytic_{projection}": _accuracy(analytic(test.features.float()), test.labels),
        }
