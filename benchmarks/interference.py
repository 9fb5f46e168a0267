"""InfLoRA's interference on real images: after a second session, how much each adapted layer's output
on the first session's inputs moved, plain LoRA over InfLoRA (higher: less interference), for the
official memory (energy = squared covariance spectrum, A projected out of the memory), GPM's
eigenvalue energy at three thresholds, and edgecl's design (A chosen by contrast with the old
inputs) at three leak bounds. EfficientNet-Lite0, Fashion-MNIST T-shirt/Trouser then Sneaker/Bag, 20
images each, 2 epochs per session."""

from __future__ import annotations

import math
import statistics

from edgecl.core.methods.inflora import InfLoraBackboneConfig
from edgecl.eval import fashion_mnist
from edgecl.host.backbones import create_backbone, preprocess_config
from edgecl.host.inflora_training import interference_ratios
from edgecl.host.subspace import SubspaceMemory

MEMORIES = {  # name -> (power, design, max_leak, threshold)
    "official: squared spectrum, projected, eps 0.95": (2, "projected", None, 0.95),
    "projected, eps 0.95": (1, "projected", None, 0.95),
    "projected, eps 0.99": (1, "projected", None, 0.99),
    "projected, eps 0.999": (1, "projected", None, 0.999),
    "contrast, max_leak 0.3, eps 0.95": (1, "contrast", 0.3, 0.95),
    "contrast, max_leak 0.1, eps 0.95": (1, "contrast", 0.1, 0.95),
    "contrast, max_leak 0.01, eps 0.95 (default)": (1, "contrast", None, 0.95),
}


def run(out) -> dict:
    written = fashion_mnist.write_image_folders(
        out / "fashion-mnist-interference", "train", 20, classes=[0, 1, 7, 8], seed=0
    )
    names = list(written)

    def task(classes):
        return [p for c in classes for p in written[c]], [i for i, c in enumerate(classes) for _ in written[c]]

    model, _ = create_backbone()
    config = InfLoraBackboneConfig(epochs=2, batch_size=16)
    memories = {
        name: (SubspaceMemory(power, design, leak or config.max_leak), threshold)
        for name, (power, design, leak, threshold) in MEMORIES.items()
    }
    plain_loss, measured = interference_ratios(
        model, task(names[:2]), task(names[2:]), preprocess_config(model), config, memories
    )
    results = {"plain LoRA": {"final_loss": round(plain_loss, 3)}}
    print(f"plain LoRA: session 1 ends at loss {plain_loss:.3f}")
    for name, m in measured.items():
        adapted = [v for v in m.ratios.values() if math.isfinite(v)] or [
            math.inf
        ]  # a layer with no direction does not move
        low, mid, high = min(adapted), statistics.median(adapted), max(adapted)
        results[name] = {
            "min": round(low, 2),
            "median": round(mid, 2),
            "max": round(high, 2),
            "layers_adapted": sum(map(math.isfinite, m.ratios.values())),
            "protected": round(m.protected, 3),
            "directions": m.directions,
            "final_loss": m.final_loss and round(m.final_loss, 3),
        }
        print(
            f"{name} ({m.protected:.0%} of the input space in memory, "
            f"{m.directions} of {config.rank * len(m.ratios)} directions, loss {results[name]['final_loss']}): "
            f"plain LoRA / InfLoRA output change on session-0 inputs, "
            f"over the {results[name]['layers_adapted']} of {len(m.ratios)} layers adapted: "
            f"min {low:.1f}x, median {mid:.1f}x, max {high:.1f}x"
        )
    return results
