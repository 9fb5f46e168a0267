"""Host training speed: SAFE's slow learner (SSF on EfficientNet-Lite0, CE + transfer loss, with the
frozen teacher) and one InfLoRA session (rank-10 LoRA on the 1x1 convolutions, both covariance
passes included), one epoch over 192 Fashion-MNIST images, on the CPU and, where one is present, on
a CUDA GPU with bfloat16 autocast (timed on a second run: the first pays for CUDA's start-up)."""

from __future__ import annotations

import torch

from edgecl.core.methods.inflora import InfLoraBackboneConfig
from edgecl.core.methods.safe import SlowLearnerConfig
from edgecl.eval import fashion_mnist
from edgecl.host.backbones import create_backbone, preprocess_config
from edgecl.host.inflora_training import train_session
from edgecl.host.slow_learner import train_slow_learner
from edgecl.host.subspace import SubspaceMemory

PER_CLASS = 96


def _seconds(device: str, paths, labels) -> dict[str, float]:
    model, _ = create_backbone()
    preprocess = preprocess_config(model)
    _, slow = train_slow_learner(
        model, paths, labels, preprocess, SlowLearnerConfig(epochs=1), device=device, show_progress=False
    )
    config = InfLoraBackboneConfig(epochs=1)
    model, _ = create_backbone()
    _, inflora = train_session(
        model,
        SubspaceMemory.from_config(config),
        paths,
        labels,
        preprocess,
        config,
        session=0,
        device=device,
        show_progress=False,
    )
    return {"slow_learner_s": slow["seconds"], "inflora_session_s": inflora["seconds"]}


def run(out) -> dict:
    written = fashion_mnist.write_image_folders(out / "training", "train", PER_CLASS, classes=[0, 1], seed=0)
    paths = [p for group in written.values() for p in group]
    labels = [i for i, group in enumerate(written.values()) for _ in group]
    devices = ["cpu"] + (["cuda"] * 2 if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        results[device] = _seconds(device, paths, labels)  # the second CUDA run overwrites the first
    if not torch.cuda.is_available():
        print("CUDA: not run (no CUDA GPU)")
    for device, seconds in results.items():
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(
            f"{name}: slow learner {len(paths) / seconds['slow_learner_s']:.1f} images/s "
            f"({seconds['slow_learner_s']:.1f} s), "
            f"InfLoRA session {len(paths) / seconds['inflora_session_s']:.1f} images/s "
            f"({seconds['inflora_session_s']:.1f} s) over {len(paths)} images, 1 epoch"
        )
    if "cuda" in results:
        print(
            "CUDA over CPU: slow learner {:.1f}x, InfLoRA {:.1f}x".format(
                *(results["cpu"][k] / results["cuda"][k] for k in ("slow_learner_s", "inflora_session_s"))
            )
        )
    return results
