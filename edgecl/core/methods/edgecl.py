"""edgecl: TOSCA and SAFE together, the design card's shape.

Host, session 0: SAFE's slow learner tuned inside the backbone and merged (edgecl/slow_learner.py),
then on its embedding a TOSCA LuCA module and the analytic classifiers. Device, each `learn`: a new
LuCA module, a fast-learner update, analytic updates. Inference blends, per sample, TOSCA's chosen
module, the fast and the slow analytic predictions by entropy (SAFE's rule, softmax(-gamma * H)).
The analytic logits are least-squares one-hot estimates (about 0..1) while TOSCA's are sigma-scaled
cosines (about -5..15); they are put on TOSCA's scale (`analytic_scale`, measured: docs/methods.md) before
the entropies are compared, or TOSCA's sharper logits would win every sample. The scores are the
blend's softmax at `temperature`, so that they rank and mean something rather than read 1.0000.
Every head sees the embedding power-normalised (`feature_power`, measured: docs/methods.md), which the
published TOSCA and SAFE do not do. Left to the method, the power is chosen from the first session's
embedding: a square root where it is non-negative (a CNN's pooled features), none where it is signed (a
ViT's [CLS] token, where the root cost 2 to 4 points). With `whiten`, the heads see the embedding
whitened with the first session's mean and shrunk covariance; left to the method, where the embedding is
signed and the first session has at least 4 classes. Both choices are part of the heads' structure.
Each part can be switched off: use_tosca, use_fast, use_slow, safe.slow.tuner=none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from edgecl.core.layers import Resemblance, power_normalize, whitening_of
from edgecl.core.methods.interface import ContinualMethod, MethodConfig, register_method
from edgecl.core.methods.safe import Safe, SafeConfig, blend
from edgecl.core.methods.tosca import Tosca, ToscaConfig
from edgecl.errors import EdgeclError

# the share of negative numbers above which an embedding counts as signed: pooled CNN features have none,
# a ViT's [CLS] about half (measured on Lite0 and ViT-S/14, docs/methods.md)
SIGNED_SHARE = 0.05
# the whitening's covariance is shrunk towards the identity at this share of its mean variance: 0.3 to 4 gave
# the same within half a point on the ViT (docs/methods.md, section 5); more is safer on a small first session
WHITEN_SHRINK = 1.0
# a first session of fewer classes is not whitened unless asked: from 2 classes the ridge picked for the whitened
# embedding was 300 to 1,000 times below what the classes after them wanted (docs/methods.md, section 5)
WHITEN_MIN_CLASSES = 4
STEP_FLOOR = 100


@dataclass(frozen=True)
class EdgeclConfig(MethodConfig):
    # a floor of 100 gradient steps, not 400: inside the blend it costs at most 0.5 points and brings a 50-image
    # class's heads under a second (docs/methods.md, section 4); bundles keep the floor they were trained with
    tosca: ToscaConfig = field(default_factory=lambda: ToscaConfig(min_steps=STEP_FLOOR))
    safe: SafeConfig = field(default_factory=lambda: SafeConfig(min_steps=STEP_FLOOR))
    use_tosca: bool = True
    use_fast: bool = True
    use_slow: bool = True
    analytic_scale: float = 80.0
    gamma: float = 1.0
    # temperature of the scores' softmax; no label changes (at 1 most images, known classes or not, score 1.0000:
    # docs/methods.md)
    temperature: float = 3.0
    # the heads see sign(f)|f|^p; 1 = the embedding as it is; None: chosen at the first session (measured:
    # docs/methods.md)
    feature_power: float | None = None
    # the heads see (f - mean) W, W = (C + s I)^-1/2 from the first session; None: where the embedding is signed
    # and the first session has at least WHITEN_MIN_CLASSES classes. On a ViT it gained 2 points from 11 classes,
    # 0.3 from 4 and 6, and lost up to 10 from 2, through the ridge picked there (docs/methods.md, section 5)
    whiten: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.use_tosca or self.use_fast or self.use_slow):
            raise EdgeclError("edgecl needs at least one of use_tosca, use_fast, use_slow")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EdgeclConfig:
        # bundles written before these settings keep their scores, their heads' inputs and their step floor
        legacy = {"temperature": 1.0, "feature_power": 1.0, "whiten": False, "tosca": {}, "safe": {}}
        return super().from_dict({**legacy, **data})

    def slow_learner(self):
        return self.safe.slow_learner()


@register_method
class Edgecl(ContinualMethod):
    name = "edgecl"
    summary = (
        "TOSCA + SAFE: slow learner merged into the backbone, a LuCA module, "
        "fast and slow analytic classifiers per session, blended by entropy"
    )
    config_class = EdgeclConfig
    slow_epochs_setting = "safe.slow.epochs"
    config: EdgeclConfig

    def __init__(self, config: EdgeclConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        self.tosca = Tosca(config.tosca, embedding_dim)
        self.safe = Safe(replace(config.safe, fast_learner=config.use_fast), embedding_dim)
        self.feature_power = config.feature_power
        self.whiten = config.whiten

    def _choose_inputs(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """The first session: how the heads see every embedding from now on."""
        signed = (features < 0).float().mean().item() > SIGNED_SHARE
        if self.feature_power is None:  # a signed embedding keeps its scale
            self.feature_power = 1.0 if signed else 0.5
        if self.whiten is None:
            self.whiten = signed and len(targets.unique()) >= WHITEN_MIN_CLASSES
        if self.whiten:
            centre, whitening = whitening_of(power_normalize(features, self.feature_power), WHITEN_SHRINK)
            self.register_buffer("centre", centre)
            self.register_buffer("whitening", whitening)

    def heads_input(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding as every head sees it."""
        features = power_normalize(features, self.feature_power or 1.0)
        return (features - self.centre) @ self.whitening if self.whiten else features

    @property
    def num_classes(self) -> int:
        return self.safe.num_classes

    adds_to_classes = True  # both parts can

    def learn(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True
    ) -> dict[str, float]:
        stats = {}
        if self.num_classes == 0:
            self._choose_inputs(features, targets)
        features = self.heads_input(features)
        if self.config.use_tosca:
            stats.update(
                {
                    f"tosca_{k}": v
                    for k, v in self.tosca.learn(features, targets, generator, show_progress=show_progress).items()
                }
            )
        stats.update(
            {
                f"safe_{k}": v
                for k, v in self.safe.learn(features, targets, generator, show_progress=show_progress).items()
            }
        )
        return stats

    def member_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        members = {}
        features = self.heads_input(features)
        if self.config.use_tosca:
            members["tosca"] = self.tosca.logits(features)
        analytic = self.safe.member_logits(features)
        for name in ("fast", "slow"):
            if getattr(self.config, f"use_{name}") and name in analytic:
                members[name] = self.config.analytic_scale * analytic[name]
        return members

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return blend(list(self.member_logits(features).values()), self.config.gamma)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features) / self.config.temperature, dim=-1)

    @torch.inference_mode()
    def known_scores(self, features: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        return self.safe.known_scores(self.heads_input(features), active)  # SAFE's class means

    @torch.inference_mode()
    def resemblance(self, features: torch.Tensor, active: torch.Tensor | None = None) -> Resemblance | None:
        return self.safe.resemblance(self.heads_input(features), active)

    @torch.inference_mode()
    def held_out_known_scores(
        self, features: torch.Tensor, targets: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.safe.held_out_known_scores(self.heads_input(features), targets, active)

    def structure(self) -> dict[str, Any]:
        parts = {"tosca": self.tosca.structure(), "safe": self.safe.structure()}
        return {**parts, "feature_power": self.feature_power, "whiten": self.whiten}

    def build(self, structure: dict[str, Any]) -> None:
        self.tosca.build(structure["tosca"])
        self.safe.build(structure["safe"])
        # heads written before the choice was stored were made with the configured power
        power = structure.get("feature_power", self.config.feature_power)
        if power is not None and (isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0):
            raise ValueError(f"feature_power {power!r} is not a number above 0")
        self.feature_power = power if power is None else float(power)
        whiten = structure.get("whiten", self.config.whiten)
        if whiten is not None and not isinstance(whiten, bool):
            raise ValueError(f"whiten {whiten!r} is not true or false")
        self.whiten = whiten
        if whiten:  # shapes to load the stored tensors into
            self.register_buffer("centre", torch.zeros(self.embedding_dim))
            self.register_buffer("whitening", torch.zeros(self.embedding_dim, self.embedding_dim))
