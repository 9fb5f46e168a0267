"""TensorRT engines for the backbone, built on the target from backbone.onnx and cached in the bundle.

An engine is specific to one GPU model and one TensorRT version, so it is keyed by compute
capability + TensorRT version + precision + batch profile and never loaded elsewhere: on another
GPU or TensorRT the key differs, and the engine is built anew (or the runtime falls back).
Written for the TensorRT 8.6 (JetPack 6.0) and 10.x Python APIs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecl.core import bundle as bundles
from edgecl.core.bundle import Bundle
from edgecl.errors import EdgeclError, param
from edgecl.runtime.ort import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)


class TensorRTUnavailable(Exception):
    """TensorRT cannot run here; the message says why."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(
            "tensorrt is not installed (JetPack ships it on a Jetson; on an x86 host, install edgecl with its "
            "tensorrt extra)"
        ) from err
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible to PyTorch")
    return tensorrt


def for_tensorrt(profile: dict[str, Any]) -> bool:
    """Whether an export profile targets TensorRT (the `cpu` profile has no workspace and no GPU provider)."""
    return profile["workspace_mib"] > 0 and "TensorrtExecutionProvider" in profile["onnxruntime_providers"]


def engine_key(compute_capability: tuple[int, int], trt_version: str, precision: str, batch: dict[str, int]) -> str:
    major, minor = compute_capability
    return f"sm{major}{minor}-trt{trt_version}-{precision}-b{batch['min']}.{batch['opt']}.{batch['max']}"


def current_key(trt, profile: dict[str, Any]) -> str:
    return engine_key(torch.cuda.get_device_capability(), trt.__version__, profile["precision"], profile["batch"])


@dataclass
class BuiltEngine:
    engine: bytes
    timing_cache: bytes
    fp32_layers: int


def _pin_fp32(trt, network, op_types: tuple[str, ...]) -> int:
    """Keep layers from these ONNX op types in fp32 (the parser names layers after the ONNX nodes)."""
    by_type = {"LayerNormalization": getattr(trt.LayerType, "NORMALIZATION", None), "Softmax": trt.LayerType.SOFTMAX}
    types = {by_type.get(op) for op in op_types} - {None}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in types or any(op in layer.name for op in op_types):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def build_engine(
    onnx_model: bytes, profile: dict[str, Any], input_size: tuple[int, int, int], timing_cache: bytes = b""
) -> BuiltEngine:
    """The TensorRT Python API: explicit-batch network, ONNX parser, builder config from the profile,
    one optimization profile over the batch axis, and a timing cache for faster rebuilds."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = (
        0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse backbone.onnx: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(profile["workspace_mib"]) << 20)
    pinned = 0
    if profile["precision"] == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if profile.get("fp32_layers"):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = _pin_fp32(trt, network, tuple(profile["fp32_layers"]))
    batch = profile["batch"]
    shapes = [(batch[k], *input_size) for k in ("min", "opt", "max")]
    optimization = builder.create_optimization_profile()
    optimization.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(optimization)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the messages above)")
    return BuiltEngine(bytes(serialized), bytes(config.get_timing_cache().serialize()), pinned)


class TensorRTBackbone:
    """Runs a deserialized engine on CUDA tensors; input and output stay float32 at the boundary."""

    def __init__(self, engine_bytes: bytes, max_batch: int) -> None:
        trt = import_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise TensorRTUnavailable("the engine could not be deserialized on this GPU / TensorRT")
        self.context = self.engine.create_execution_context()
        self.max_batch = max_batch

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        outputs = []
        stream = torch.cuda.current_stream()
        for start in range(0, len(images), self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.max_batch], dtype=np.float32)).cuda()
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            outputs.append(out.cpu())
        return torch.cat(outputs)


@dataclass
class EngineReport:
    key: str
    entry: dict[str, Any]
    seconds: float


def build_into_bundle(bundle_path: Path, *, lock_timeout: float = 600.0, keep_existing: bool = False) -> EngineReport:
    """Build the engine for this GPU + TensorRT from the bundle's backbone.onnx and store it there
    (with its timing cache), under the bundle's lock; engines for other GPUs stay but are not used.
    With keep_existing (a build on first use), an engine for this key already there, or committed by
    another process while this one built, is kept instead."""
    start = time.perf_counter()
    bundle = Bundle.open(bundle_path)
    export = bundle.manifest.export
    if not export:
        raise EdgeclError(f"{bundle_path}: no backbone.onnx to build from; run `edgecl export --target NAME` first")
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as err:
        raise EdgeclError(f"cannot build a TensorRT engine here: {err}") from err
    profile = export["profile"]
    if not for_tensorrt(profile):
        raise EdgeclError(
            f"{bundle_path}: exported for target {profile['name']}, which has no TensorRT settings; "
            f"export again with {param('target')} jetson, jetson-orin-nx, jetson-agx-orin or x86-cuda"
        )
    key = current_key(trt, profile)
    if keep_existing and key in bundle.manifest.engines:
        return EngineReport(key, bundle.manifest.engines[key], time.perf_counter() - start)
    others = [k for k in bundle.manifest.engines if k != key]
    log.info(
        "building TensorRT engine %s on %s%s",
        key,
        torch.cuda.get_device_name(),
        f" (the bundle's other engines, {', '.join(others)}, are for another GPU or TensorRT)" if others else "",
    )
    same_gpu = [
        e for k, e in bundle.manifest.engines.items() if k.split("-")[:2] == key.split("-")[:2] and "timing_cache" in e
    ]
    cache = bundle.files.read(same_gpu[0]["timing_cache"]) if same_gpu else b""
    input_size = tuple(bundle.manifest.preprocess["input_size"])
    built = build_engine(bundle.read_bytes(export), profile, input_size, cache)
    with bundles.update(bundle_path, lock_timeout) as change:
        if (change.manifest.export or {}).get("sha256") != export["sha256"]:
            raise EdgeclError(f"{bundle_path}: backbone.onnx changed while the engine was building; build again")
        if keep_existing and key in change.manifest.engines:  # another process built it meanwhile
            change.discard()
        else:
            engine = change.write_file(f"{bundles.ENGINES_DIR}/{key}.engine", built.engine)
            timing = change.write_file(f"{bundles.ENGINES_DIR}/{key}.timing-cache", built.timing_cache)
            change.manifest.engines[key] = {
                **engine,
                "timing_cache": timing["file"],
                "gpu": torch.cuda.get_device_name(),
                "compute_capability": list(torch.cuda.get_device_capability()),
                "tensorrt": trt.__version__,
                "precision": profile["precision"],
                "batch": profile["batch"],
                "fp32_layers_pinned": built.fp32_layers,
                "onnx_sha256": export["sha256"],
                "built": bundles.now(),
            }
        entry = change.manifest.engines[key]
    return EngineReport(key, entry, time.perf_counter() - start)
