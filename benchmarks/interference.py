"""InfLoRA's interference on real images: after a second session, how much each adapted layer's
output on the first session's inputs moved, plain LoRA over InfLoRA (higher: less interference),
for the official memory criterion (energy = squared covariance spectrum) and edgecl's (GPM's
eigenvalue energy) at three thresholds. EfficientNet-Lite0, Fashion-MNIST T-shirt/Trouser then
Sneaker/Bag, 20 images each, 2 epochs per session."""

from __future__ import annotations

import statistics

from edgecl import fashion_mnist
from edgecl.backbones import create_backbone, preprocess_config
from edgecl.inflora import interference_ratios
from edgecl.methods.inflora import InfLoraBackboneConfig

MEMORIES = {"official energy, eps 0.95": (2, 0.95), "eps 0.95 (default)": (1, 0.95), "eps 0.99": (1, 0.99), "eps 0.999": (1, 0.999)}


def run(out) -> dict:
    written = fashion_mnist.write_image_folders(out / "fashion-mnist-interference", "train", 20, classes=[0, 1, 7, 8], seed=0)
    names = list(written)

    def task(classes):
        return [p for c in classes for p in written[c]], [i for i, c in enumerate(classes) for _ in written[c]]

    model, _ = create_backbone()
    ratios = interference_ratios(model, task(names[:2]), task(names[2:]), preprocess_config(model),
                                 InfLoraBackboneConfig(epochs=2, batch_size=16), MEMORIES)
    protected, results = ratios.pop("protected"), {}
    for name, per_layer in ratios.items():
        values = list(per_layer.values())
        results[name] = {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2),
                         "protected": round(protected[name], 3)}
        print(f"{name} ({protected[name]:.0%} of the input space in memory): plain LoRA / InfLoRA output change on "
              f"session-0 inputs, {len(values)} layers: min {min(values):.1f}x, median {statistics.median(values):.1f}x, max {max(values):.1f}x")
    return results
