"""Export a network for inference: ``python -m relnas.export ...`` (see docs/export.md).

Sources of the network (one of):

* ``checkpoint=<relnas.train run dir | .ckpt>``: architecture, input size and weights from the
  checkpoint, chosen as :mod:`relnas.evaluate` chooses it;
* ``reference_checkpoint=<official .pt>``: the official code's weights in the architecture of
  ``genotype``, ``network``, ``C``, ``layers``, ``num_classes``, ``in_channels``, ``auxiliary``;
* neither: that architecture with fresh weights (seeded by ``seed``);
* ``backbone=<name>``: a transfer backbone (:func:`relnas.transfer.backbones.build_backbone`, keys
  ``backbone.*``); its feature maps are the named outputs (``stride8``, ``stride16``, ...).

What is exported is the inference graph: eval mode (batch-norm statistics, no drop path), no
auxiliary head, input ``images`` of shape ``(batch, in_channels, input_size, input_size)`` with
a dynamic batch dimension; a classifier's output is ``logits``. The graph is traced on the CPU
from the PyTorch network as it runs there: ``format=torchscript`` with ``torch.jit.trace``, its CPU
fast paths included; ``format=onnx`` with ``torch.onnx``'s TorchScript-based exporter (opset
:data:`OPSET`), the dilated convolutions as plain dilated kernels (:func:`_plain_dilated_convs`). The written file is then loaded back (ONNX Runtime; ``torch.jit.load``) and
run on a random batch of ``parity_batch`` images (a size other than the traced one), and its
largest absolute difference from the PyTorch network goes into ``result.json`` and the final
JSON line; above ``tolerance`` the command fails (exit 2) after writing both.

``latency=true`` also measures the network at batch 1 (median milliseconds per image) and at
``latency_batch`` (images per second) in PyTorch eager, TorchScript and ONNX Runtime, on the CPU
and on the GPU when there is one (:func:`measure_latency`).
"""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from relnas import runs
from relnas.errors import ConfigError, ExportError
from relnas.utils.cli import command, entry_point

#: the export formats and the file each writes into the run directory
FILES = {"onnx": "network.onnx", "torchscript": "network.pt"}
#: the record of an export (also the final JSON line)
#: the input's name in the exported graph
INPUT = "images"
#: the ONNX operator set of the exported graphs
OPSET = 17
#: the batch size the graph is traced at (the parity check runs another one)
TRACE_BATCH = 2


class Logits(nn.Module):
    """An evaluation network's inference function: the logits (its auxiliary head removed), the
    input in the memory format the network runs in."""

    def __init__(self, net: nn.Module, channels_last: bool) -> None:
        super().__init__()
        if hasattr(net, "auxiliary_head"):  # never runs in eval mode; not part of the exported file
            del net.auxiliary_head
            net._auxiliary = False
        net.drop_path_prob = 0.0
        self.net = net
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))[0]


@dataclass
class Target:
    """What is exported: the module (eval mode), its input shape without the batch dimension,
    its output names and a description for the record."""

    module: nn.Module
    input_shape: tuple
    outputs: List[str]
    source: Dict[str, Any]
    describe: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- the network

def _input_size(cfg: DictConfig) -> Optional[int]:
    size = cfg.get("input_size")
    if size in (None, ""):
        return None
    if int(size) <= 0:
        raise ConfigError(f"input_size must be positive, got {size}")
    return int(size)


def build_target(cfg: DictConfig) -> Target:
    """The module to export and its description, from the export config (see the module doc)."""
    sources = [k for k in ("checkpoint", "reference_checkpoint") if cfg.get(k)] + (
        ["backbone"] if cfg.get("backbone") is not None else [])
    if len(sources) > 1:
        raise ConfigError(f"give at most one of checkpoint=, reference_checkpoint=, backbone= (got {', '.join(sources)})")
    if cfg.get("backbone") is not None:
        return _backbone_target(cfg)
    from relnas.inspect import arch_from_config

    if cfg.get("checkpoint"):
        from relnas.evaluate import classifier_from_checkpoint, read_train_checkpoint
        from relnas.nas.arch import ArchSpec

        path, ckpt = read_train_checkpoint(cfg.checkpoint)
        hp = ckpt["hyper_parameters"]
        arch = ArchSpec.from_dict({**hp, "image_size": _input_size(cfg) or hp.get("image_size")})
        inference_arch = arch.replace(auxiliary=False)
        inference_arch.check_input()
        model = classifier_from_checkpoint(ckpt, arch)
        net, channels_last = model.net, model.memory_format == torch.channels_last
        source: Dict[str, Any] = {"checkpoint": str(path)}
    else:
        arch = arch_from_config(cfg)
        inference_arch = arch.replace(auxiliary=False)
        inference_arch.check_input()
        torch.manual_seed(int(cfg.get("seed") or 0))
        net = arch.build()
        channels_last = bool(cfg.get("channels_last", True))
        if cfg.get("reference_checkpoint"):
            from relnas.nas.checkpoint import load_reference_checkpoint

            net = load_reference_checkpoint(cfg.reference_checkpoint, network=net, map_location="cpu")
            source = {"reference_checkpoint": str(cfg.reference_checkpoint)}
        else:
            source = {"untrained": True, "seed": int(cfg.get("seed") or 0)}
    module = Logits(net, channels_last).eval()
    return Target(module, (arch.in_channels, arch.image_size, arch.image_size), ["logits"], source,
                  {**inference_arch.to_dict(), "channels_last": channels_last})


def _backbone_target(cfg: DictConfig) -> Target:
    from relnas.transfer.__main__ import backbone_from_config

    bb = backbone_from_config(cfg.backbone).eval()
    size = _input_size(cfg) or 224
    bb.check_input_size((size, size))
    in_channels = int(cfg.backbone.get("in_channels") or 3)
    weights = getattr(bb, "weights", None)
    source = {"backbone": str(cfg.backbone.name), "weights": None if weights is None else str(weights)}
    return Target(bb, (in_channels, size, size), list(bb.feature_info.keys()), source,
                  {**bb.describe(), "image_size": size, "in_channels": in_channels})


# ---------------------------------------------------------------------- export and parity

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The tracers' deprecation and tracer warnings are about their own future, not this graph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _plain_dilated_convs() -> Iterator[None]:
    """The dilated depthwise convolutions as one dilated kernel each while tracing for ONNX
    (:data:`relnas.nas.operations.PHASE_DILATED_CONV` off): the same function as PyTorch's CPU
    pixel-parity path, as one ``Conv`` node that ONNX Runtime's own kernels run faster than the
    four phase convolutions and their scatters."""
    from relnas.nas import operations

    before = operations.PHASE_DILATED_CONV
    operations.PHASE_DILATED_CONV = False
    try:
        yield
    finally:
        operations.PHASE_DILATED_CONV = before


def export_onnx(module: nn.Module, example: torch.Tensor, path: Union[Path, io.BytesIO],
                outputs: Sequence[str]) -> Union[Path, io.BytesIO]:
    """Write ``module``'s graph traced at ``example`` to the ONNX file ``path`` (or a buffer),
    with a dynamic batch dimension."""
    with _quiet(), torch.no_grad(), _plain_dilated_convs():
        torch.onnx.export(module, (example,), path if isinstance(path, io.BytesIO) else str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=list(outputs),
                          dynamic_axes={name: {0: "batch"} for name in (INPUT, *outputs)})
    return path


def trace_torchscript(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` traced at ``example`` (a dict of feature maps stays a dict)."""
    with _quiet(), torch.no_grad():
        return torch.jit.trace(module, example, strict=False, check_trace=False)


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, outputs: Sequence[str]) -> Path:
    """Write ``module`` traced at ``example`` to the TorchScript file ``path``."""
    trace_torchscript(module, example).save(str(path))
    return path


EXPORTERS: Dict[str, Callable[..., Path]] = {"onnx": export_onnx, "torchscript": export_torchscript}


def _named(out: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The outputs of a module or an exported file as ``{name: array}``."""
    if isinstance(out, Mapping):
        return {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    if isinstance(out, torch.Tensor):
        out = [out]
    return {n: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for n, v in zip(names, out)}


def onnx_session(model: Any, device: str = "cpu"):
    """An ONNX Runtime session of ``model`` (a path or the file's bytes) with as many intra-op
    threads as torch uses (the same CPU share as the PyTorch runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, opts, providers=providers)


def run_exported(fmt: str, path: Path, x: torch.Tensor, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Run the exported file ``path`` on ``x`` as a user without relnas would."""
    if fmt == "onnx":
        sess = onnx_session(path)
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT: x.numpy()})))
    with _quiet(), torch.no_grad():
        return _named(torch.jit.load(str(path), map_location="cpu")(x), names)


def max_abs_difference(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> float:
    """The largest absolute difference over all outputs (inf when the names or shapes differ)."""
    if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
        return float("inf")
    return max(float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k].astype(np.float64)))) for k in ours)


# ---------------------------------------------------------------------- latency

def _timed(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_latency(module: nn.Module, input_shape: Sequence[int], batch: int = 32, warmup: int = 3,
                    repeats: int = 20, devices: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Inference time of ``module`` in PyTorch eager, TorchScript and ONNX Runtime: per runtime and
    device, the median milliseconds per image at batch 1 (``repeats`` timed runs) and images per
    second at ``batch`` (``max(3, repeats // 4)`` timed runs), each after ``warmup`` untimed runs.
    ``devices``: default the CPU and, when there is one, the GPU (ONNX Runtime on the GPU only
    with its CUDA provider)."""
    import onnxruntime as ort

    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: List[Dict[str, Any]] = []
    big_repeats = max(3, repeats // 4)
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        mod = module.to(device).eval()
        x1 = torch.randn(1, *input_shape, device=device)
        xb = torch.randn(batch, *input_shape, device=device)
        onnx_bytes = io.BytesIO()
        export_onnx(mod, torch.randn(TRACE_BATCH, *input_shape, device=device), onnx_bytes, ["out"])
        runners: Dict[str, Callable[[torch.Tensor], Any]] = {"eager": mod, "torchscript": trace_torchscript(
            mod, torch.randn(TRACE_BATCH, *input_shape, device=device))}
        if device == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers():
            sess = onnx_session(onnx_bytes.getvalue(), device)
            runners["onnxruntime"] = lambda x, s=sess: s.run(None, {INPUT: x.cpu().numpy()})
        for runtime, fn in runners.items():
            with torch.no_grad():
                one = _timed(lambda: fn(x1), warmup, repeats, sync)
                many = _timed(lambda: fn(xb), max(1, warmup // 2), big_repeats, sync)
            rows.append({"runtime": runtime, "device": device, "ms_per_image_batch1": round(1000 * one, 3),
                         "images_per_s": round(batch / many, 2), "batch": batch})
        module.to("cpu")
    return rows


def machine_info() -> Dict[str, Any]:
    """What the latency figures ran on: :func:`relnas.utils.run_info.hardware_info` (CPU model and
    cores, threads, GPUs, library versions) and the ONNX Runtime version."""
    import onnxruntime as ort

    from relnas.utils.run_info import hardware_info

    return {**hardware_info(), "onnxruntime": ort.__version__}


# ---------------------------------------------------------------------- the task

def export(cfg: DictConfig) -> Dict[str, Any]:
    """Export, check parity, optionally measure latency; return the record (see the module doc)."""
    fmt = str(cfg.get("format"))
    if fmt not in FILES:
        raise ConfigError(f"unknown format {fmt!r}: choose {' or '.join(FILES)}")
    tolerance = float(cfg.get("tolerance"))
    parity_batch = int(cfg.get("parity_batch"))
    if parity_batch <= 0:
        raise ConfigError(f"parity_batch must be positive, got {parity_batch}")
    target = build_target(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILES[fmt]
    gen = torch.Generator().manual_seed(int(cfg.get("seed") or 0))
    example = torch.randn(TRACE_BATCH, *target.input_shape, generator=gen)
    try:
        EXPORTERS[fmt](target.module, example, path, target.outputs)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:  # an operation the exporter cannot write
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot export to {fmt}: {first}") from None
    x = torch.randn(parity_batch, *target.input_shape, generator=gen)
    with torch.no_grad():
        ours = _named(target.module(x), target.outputs)
    diff = max_abs_difference(ours, run_exported(fmt, path, x, target.outputs))
    passed = bool(diff <= tolerance)
    record: Dict[str, Any] = {
        "format": fmt, "file": str(path), **target.source,
        "input": {"name": INPUT, "shape": ["batch", *target.input_shape]},
        "outputs": {k: ["batch", *v.shape[1:]] for k, v in ours.items()},
        "parity": {"max_abs_diff": diff, "tolerance": tolerance, "batch": parity_batch, "passed": passed},
        "network": target.describe,
    }
    if passed and cfg.get("latency"):
        record["latency"] = measure_latency(target.module, target.input_shape, int(cfg.latency_batch),
                                            int(cfg.latency_warmup), int(cfg.latency_repeats))
        record["machine"] = machine_info()
        for row in record["latency"]:
            print(f"{row['runtime']:<12} {row['device']:<5} {row['ms_per_image_batch1']:>9.2f} ms/image (batch 1)  "
                  f"{row['images_per_s']:>9.1f} images/s (batch {row['batch']})", flush=True)
    if not passed:
        record["reason"] = (f"parity check failed: the exported {fmt} file differs from the PyTorch network by up "
                            f"to {diff:.3g} (tolerance {tolerance:g})")
    result = runs.write_result(out_dir, "export", "max_abs_diff", diff, record, status="ok" if passed else "failed")
    print(f"wrote {path} (parity: max |difference| {diff:.3g}, tolerance {tolerance:g})", flush=True)
    print(json.dumps(record, default=str), flush=True)
    if not passed:
        raise ExportError(f"{record['reason']}; see {result}")
    return record


@entry_point("export")  # unknown config-group choices: one line, exit 2
@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
@command  # a known error: one ``error: ...`` line and exit status 2
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
