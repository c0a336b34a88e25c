"""Regenerate the calibrated models of the shipped results, export them to ONNX and verify them in onnxruntime.

For each run folder under results/ that was calibrated, the run's feature calibration is repeated with its
recorded settings (seeded, so it reproduces the recorded calibrated top-1; the script checks this), its
``calibrated.pt`` written, the model exported as ONNX QDQ (``model.onnx``) and checked in onnxruntime on the
full test split (``model.onnx.json``). Uniform-bit models of the networks without a calibrated result
(ShuffleNetV2, EfficientNet-Lite0) are exported and verified too, into results/export/.

    python benchmarks/export_results.py                     # everything (about 30 min on 2 CPU cores)
    python benchmarks/export_results.py --only evoq-resnet20-jpeg-3bit
    python benchmarks/export_results.py --only headline/shufflenetv2-x0.5/mixed-ilp-3.0/seed-0

The headline runs exported are seed 0 of each model's goal comparison (mixed at the goal's budget and the
uniform width of the same size); runs not finished yet are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from mixq.bits import BitConfig
from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.export import compare_outputs, export_onnx, weight_levels
from mixq.provenance import versions
from mixq.quant.model import QuantModel, load_calibrated, save_calibrated

RESULTS = Path(__file__).resolve().parents[1] / "results"
CALIBRATED_RUNS = ["evoq-resnet20-jpeg-3bit", "allocate-emq-final-resnet20-jpeg-3bit",
                   "allocate-emq-resnet20-jpeg-3bit", "allocate-hawq-v2-resnet20-jpeg-3bit",
                   "evoq-mobilenetv2-jpeg-3bit"]
#: #13's headline comparisons, seed 0: the searched model at the goal's budget beside uniform bits of the same size
HEADLINE_RUNS = [f"headline/{model}/{row}/seed-0" for model, rows in (
    ("shufflenetv2-x0.5", ("mixed-ilp-3.0", "uniform-3")), ("mobilenetv2-jpeg", ("mixed-ilp-3.0", "uniform-3")),
    ("resnet20-jpeg", ("mixed-ilp-3.0", "uniform-3")), ("resnet18-jpeg", ("mixed-ilp-2.5", "uniform-2")),
    ("efficientnet-lite0", ("mixed-ilp-4.0", "uniform-4"))) for row in rows]
UNIFORM = [("shufflenetv2-x0.5", 4, "int"), ("efficientnet-lite0", 8, "int"), ("mobilenetv2-jpeg", 4, "int"),
           ("efficientnet-lite0", 8, "uint")]


def _calibration_of(result: dict) -> CalibrationConfig:
    """The calibration settings a run recorded (allocation runs used the defaults with the run's seed)."""
    rec = result.get("calibration")
    if rec is None:
        return CalibrationConfig(seed=int(result.get("seed", 0)))
    return CalibrationConfig.from_record(rec)  # keys a record lacks mean their values before they existed


def _verify(qm: QuantModel, task, onnx_path: Path, record: dict, batch_size: int, weight_type: str = "int") -> dict:
    report = export_onnx(qm, onnx_path, tuple(task.calib.shape[1:]), weight_type=weight_type)
    levels = weight_levels(onnx_path, qm)
    n_batches = -(-len(task.test) // batch_size)
    v = compare_outputs(onnx_path, qm, task.test_batches(batch_size), total=n_batches)
    record.update({"export": report.to_dict(), "verify": v, "max_levels_per_channel": levels,
                   "avg_bits": qm.avg_bits(), "size_mb": qm.size_mb(), "n_test": len(task.test),
                   "versions": versions()})
    onnx_path.with_name(onnx_path.name + ".json").write_text(json.dumps(record, indent=1))
    print(f"  {onnx_path.relative_to(RESULTS.parent)}: {report.file_bytes / 2**20:.4f} MB file, weights "
          f"{report.weight_bytes / 2**20:.4f} MB (containers {report.container_bytes / 2**20:.4f}, ideal "
          f"{report.ideal_bytes / 2**20:.4f}); top-1 mixq {v['mixq_top1']:.2f} / onnxruntime {v['ort_top1']:.2f} "
          f"/ unoptimized {v['ort_noopt_top1']:.2f}; max |logit diff| {v['ort_max_abs_logit_diff']:.3g}")
    return record


def calibrated_run(name: str, batch_size: int) -> None:
    """Recalibrate one shipped run (or load the ``calibrated.pt`` it wrote here), check it reproduces, export
    and verify it."""
    run = RESULTS / name
    result = json.loads((run / "result.json").read_text())
    recorded = result.get("calibrated_top1", result.get("quant_top1"))
    task = load_task(result["model"], samples=int(result["samples"]), seed=int(result["seed"]))
    qm = QuantModel(task.model, calib=task.calib, act_bits=int(result.get("act_bits", 8)),
                    weight_range=result.get("weight_range", "minmax"))
    # a uniform run (benchmarks/headline.py) records its width instead of a config.json
    qm.set_bits(BitConfig.load(run / "config.json") if (run / "config.json").is_file() else int(result["uniform_bits"]))
    threads = int(result.get("versions", {}).get("torch_threads", torch.get_num_threads()))
    reused = (run / "calibrated.pt").is_file()
    if reused:  # written by the run itself (this machine, not git): the exact model the run evaluated
        load_calibrated(qm, run / "calibrated.pt")
    else:
        # float sums depend on the thread count, and 200 calibration steps amplify such differences: use the run's
        saved_threads, seconds = torch.get_num_threads(), time.perf_counter()
        torch.set_num_threads(threads)
        try:
            calibrate(qm, task.calib, _calibration_of(result), progress=True)
        finally:
            torch.set_num_threads(saved_threads)
        seconds = time.perf_counter() - seconds
    top1 = task.top1(qm, batch_size, desc="calibrated")
    if not reused:
        save_calibrated(qm, run / "calibrated.pt")
    how = "run's calibrated.pt loaded" if reused else f"recalibrated in {seconds:.0f} s on {threads} thread(s)"
    print(f"{name}: {how}, top-1 {top1:.2f} (recorded {recorded:.2f})")
    record = {"run": name, "model": result["model"], "calibrated": True, "recalibrated_top1": top1,
              "recorded_calibrated_top1": recorded, "calibration_seconds": None if reused else seconds,
              "calibration_threads": threads, "calibrated_pt_reused": reused,
              "fp32_top1": result.get("fp32_top1")}
    _verify(qm, task, run / "model.onnx", record, batch_size)


def uniform_model(model: str, bits: int, batch_size: int, weight_type: str) -> None:
    """Export and verify a uniform-bit model (no calibration)."""
    task = load_task(model, samples=50, seed=0)
    qm = QuantModel(task.model, calib=task.calib)
    qm.set_bits(bits)
    print(f"{model} uniform {bits}-bit, {weight_type} weights")
    record = {"model": model, "bits": bits, "calibrated": False, "seed": 0, "samples": 50, "weight_type": weight_type,
              "fp32_top1": task.top1(task.model, batch_size, desc="fp32")}
    suffix = "" if weight_type == "int" else f"-{weight_type}"
    _verify(qm, task, RESULTS / "export" / f"{model}-w{bits}a8{suffix}.onnx", record, batch_size, weight_type)


def table() -> str:
    """The README table, from every ``*.onnx.json`` under results/."""
    rows = ["| exported model | avg bits | FP32 | mixq top-1 | onnxruntime | unoptimized | same argmax | max / mean "
            "abs logit diff | ONNX file MB | integer weights MB | ideal packed MB | test images |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(RESULTS.rglob("*.onnx.json")):
        r = json.loads(path.read_text())
        if "export" not in r:  # written by `mixq export --verify` (e.g. results/pareto-study): its own format
            continue
        v, e = r["verify"], r["export"]
        what = r.get("run") or f"{r['model']} uniform W{r['bits']}A8" + (
            f", {r['weight_type']} weights" if r.get("weight_type", "int") != "int" else "")
        mib = 2**20
        rows.append(f"| {what}{' (calibrated)' if r['calibrated'] else ''} | {r['avg_bits']:.3f} | "
                    f"{r['fp32_top1']:.2f} | {v['mixq_top1']:.2f} | {v['ort_top1']:.2f} | {v['ort_noopt_top1']:.2f} | "
                    f"{100 * v['ort_argmax_agreement']:.2f} % | {v['ort_max_abs_logit_diff']:.3g} / "
                    f"{v['ort_mean_abs_logit_diff']:.3g} | {e['file_bytes'] / mib:.4f} | "
                    f"{e['weight_bytes'] / mib:.4f} | {e['ideal_packed_bytes'] / mib:.4f} | {v['n']} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", help="run folders or model names to do (default: all)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--table", action="store_true", help="only print the README table from the result files")
    args = p.parse_args()
    if args.table:
        print(table())
        return
    warnings.simplefilter("ignore")
    (RESULTS / "export").mkdir(exist_ok=True)
    for name in CALIBRATED_RUNS + HEADLINE_RUNS:
        if (args.only is None or name in args.only) and (RESULTS / name / "result.json").is_file():
            calibrated_run(name, args.batch_size)
    for model, bits, weight_type in UNIFORM:
        if args.only is None or model in args.only or f"{model}-{weight_type}" in args.only:
            uniform_model(model, bits, args.batch_size, weight_type)


if __name__ == "__main__":
    main()
