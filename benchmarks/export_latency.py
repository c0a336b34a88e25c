"""onnxruntime CPU latency of exported models: FP32 against QDQ exports, at batch 1 and 64, as ratios in one run.

For each model, four files are written to a temporary folder: the FP32 model (float weights and activations),
W8A8, W4A8 and a mixed W2..8/A8 QDQ export. Each is timed in onnxruntime with its default optimizations
(median of repeated runs after a warm-up) and the optimized graph is inspected: how many Conv/Gemm run as
integer ``QLinearConv`` (8-bit QDQ fused), how many stay float ``Conv`` after a weight ``DequantizeLinear``
(no integer kernel for that weight type: the weight is dequantized to float once, at load time, by constant
folding, or at every run).

    python benchmarks/export_latency.py                     # resnet20-jpeg and mobilenetv2-jpeg
    python benchmarks/export_latency.py --models resnet20-jpeg --repeats 50
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import mixq
from mixq.export import export_onnx
from mixq.provenance import versions
from mixq.timing import median_seconds


def _configs(qm: mixq.QuantModel) -> dict[str, dict[str, int] | int]:
    names = qm.layer_names
    mixed = {n: (8 if i in (0, len(names) - 1) else (2, 3, 4, 6)[i % 4]) for i, n in enumerate(names)}
    return {"W8A8": 8, "W4A8": 4, "mixed W2-8/A8": mixed}


def _session(path: Path, save_optimized: Path | None = None) -> ort.InferenceSession:
    def make(no_qdq_fusion: bool) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if save_optimized is not None:
            so.optimized_model_filepath = str(save_optimized)
        if no_qdq_fusion:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    try:
        return make(False)
    except Exception:  # INT2 weights: onnxruntime's QDQ fusion rejects them (see mixq.export.verify)
        return make(True)


def _optimized_ops(path: Path) -> collections.Counter:
    out = path.with_suffix(".opt.onnx")
    _session(path, save_optimized=out)
    return collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def bench_model(name: str, repeats: int, folder: Path) -> None:
    task = mixq.load_task(name, samples=32, seed=0, n_test=64)
    shape = tuple(task.calib.shape[1:])
    fp32 = mixq.quantize(task.model, 32, task.calib, act_bits=32)
    files = {"FP32": folder / f"{name}-fp32.onnx"}
    export_onnx(fp32, files["FP32"], shape)
    for label, bits in _configs(fp32).items():
        qm = mixq.quantize(task.model, bits, task.calib)
        files[label] = folder / f"{name}-{label.split()[0].replace('/', '')}.onnx"
        export_onnx(qm, files[label], shape)
    print(f"\n{name} (onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, default session options)")
    print("| model | file MB | batch 1 ms | batch 64 ms | vs FP32 (1) | vs FP32 (64) | QLinearConv | float Conv/Gemm "
          "| DequantizeLinear left |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = {}
    for label, path in files.items():
        sess = _session(path)
        times = {}
        for batch in (1, 64):
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            times[batch] = median_seconds(lambda s=sess, x=x: s.run(None, {"input": x}), repeats=repeats, warmup=3)
        if label == "FP32":
            base = times
        ops = _optimized_ops(path)
        print(f"| {label} | {path.stat().st_size / 2**20:.3f} | {1e3 * times[1]:.2f} | {1e3 * times[64]:.1f} | "
              f"{times[1] / base[1]:.2f}x | {times[64] / base[64]:.2f}x | {ops.get('QLinearConv', 0)} | "
              f"{ops.get('Conv', 0) + ops.get('Gemm', 0) + ops.get('FusedConv', 0) + ops.get('FusedGemm', 0)} | "
              f"{ops.get('DequantizeLinear', 0)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20-jpeg", "mobilenetv2-jpeg"])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    print("versions:", versions(), "onnxruntime", ort.__version__)
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            bench_model(name, args.repeats, Path(d))


if __name__ == "__main__":
    main()
