"""``mixq export``: a run's (or a bit configuration's) quantized model as ONNX QDQ or a packed checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixq.cli.common import EPILOG_DATA, add_task_args, bits_from_args, task_from_args
from mixq.errors import MixqError
from mixq.export import (
    DEFAULT_OPSET,
    FORMATS,
    OPSETS,
    WEIGHT_TYPES,
    check_opset,
    compare_outputs,
    export,
    model_from_run,
)
from mixq.export import weight_levels as count_levels
from mixq.provenance import versions
from mixq.quant.model import QuantModel


def _model_to_export(args: argparse.Namespace):
    """``(task, qm, calibrated, source)`` from a run folder or from --bits / --config."""
    if args.run_dir is not None:
        if args.config is not None or args.bits is not None:
            raise MixqError("give a run folder or --config / --bits, not both")
        task, qm, calibrated = model_from_run(args.run_dir, args.data_root, args.model_root, args.n_test)
        return task, qm, calibrated, str(args.run_dir)
    bits = bits_from_args(args, "give a run folder, or exactly one of --bits B / --config FILE")
    task = task_from_args(args)
    qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
    qm.set_bits(bits)
    return task, qm, False, args.config or f"uniform {args.bits}-bit"


def cmd_export(args: argparse.Namespace) -> int:
    """Write the quantized model; with --verify, compare it in onnxruntime with mixq's own evaluation."""
    fmt = args.format
    out = Path(args.out or (Path(args.run_dir or ".") / f"model.{fmt}"))
    if out.exists() and out.is_dir():
        raise MixqError(f"--out {str(out)!r} is a folder; give a file name such as model.{fmt}")
    if fmt == "onnx":
        check_opset(args.opset)  # before any work
    if args.verify and fmt != "onnx":
        raise MixqError("--verify runs the ONNX file in onnxruntime; it needs --format onnx")
    task, qm, calibrated, source = _model_to_export(args)
    report = export(qm, out, fmt, opset=args.opset, model=task.name, weight_type=args.weight_type)
    record = {"source": source, "model": task.name, "format": fmt, "calibrated": calibrated,
              "avg_bits": qm.avg_bits(), "size_mb": qm.size_mb(), **report, "versions": versions()}
    mib = 2**20
    print(f"wrote {out} ({record.get('file_bytes', 0) / mib:.4f} MB) from {source} ({task.name}, "
          f"{qm.avg_bits():.3f} avg bits{', calibrated' if calibrated else ''})")
    if fmt == "onnx":
        print(f"weights: {report['weight_bytes'] / mib:.4f} MB in the file's integer initializers; "
              f"{report['container_bytes'] / mib:.4f} MB implied by the container types (INT2/INT4/INT8); "
              f"{report['ideal_packed_bytes'] / mib:.4f} MB ideal at b bits per weight")
    else:
        print(f"file / ideal packed size = {report['ratio']:.3f} (ideal {report['ideal_bytes'] / mib:.4f} MB)")
    if args.verify:
        levels = count_levels(out, qm)
        n_batches = -(-len(task.test) // args.batch_size)
        v = compare_outputs(out, qm, task.test_batches(args.batch_size), total=n_batches,
                            progress=not args.no_progress)
        record["verify"] = {**v, "max_levels_per_channel": levels, "fp32_top1": task.top1(
            task.model, args.batch_size, not args.no_progress, desc="fp32")}
        print(f"verified on {v['n']} test images: FP32 {record['verify']['fp32_top1']:.2f} %, mixq "
              f"{v['mixq_top1']:.2f} %, onnxruntime {v['ort_top1']:.2f} % ({v['ort_top1_diff']:+.2f}; "
              f"unoptimized {v['ort_noopt_top1']:.2f} %)")
        print(f"logits: max |diff| {v['ort_max_abs_logit_diff']:.4g}, mean {v['ort_mean_abs_logit_diff']:.3g} "
              f"(unoptimized {v['ort_noopt_max_abs_logit_diff']:.4g} / {v['ort_noopt_mean_abs_logit_diff']:.3g}); "
              f"same argmax on {100 * v['ort_argmax_agreement']:.2f} % of images; every weight channel holds "
              f"<= 2^b values")
        if v["ort_session_note"]:
            print(f"note: {v['ort_session_note']}")
        if abs(v["ort_top1_diff"]) > 1.0 and abs(v["ort_noopt_top1_diff"]) <= 1.0 and args.weight_type == "int":
            print("warning: onnxruntime's optimized session is far from mixq while the unoptimized one agrees: its "
                  "fused uint8 x int8 kernels can saturate on x86 CPUs without VNNI; export with --weight-type uint "
                  "(UINT2/4/8 weights) or run with session option session.disable_quant_qdq=1")
    side = out.with_name(out.name + ".json")
    side.write_text(json.dumps(record, indent=1))
    print(f"wrote {side}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export``.

    Args:
        sub: the main parser's subparsers.
    """
    p = sub.add_parser(
        "export", help="write a quantized model as ONNX QDQ (true INT2/INT4/INT8 weights) or a packed checkpoint",
        description="Export the quantized model of a run folder (mixq evoq / mixq allocate; calibrated weights "
                    "when the run saved calibrated.pt) or of --bits / --config: as ONNX QDQ (integer weight "
                    "initializers in the smallest type that holds their bits, per-channel DequantizeLinear, "
                    "QuantizeLinear/DequantizeLinear on every quantized layer's input; onnx.checker-clean) or as a "
                    "bit-packed native checkpoint (--format pt; mixq.load_quantized rebuilds it exactly). "
                    "Writes FILE.json beside it with sizes, verification and library versions.",
        epilog=EPILOG_DATA,
    )
    p.add_argument("run_dir", nargs="?", help="run folder holding result.json and config.json")
    add_task_args(p)
    p.add_argument("--bits", type=int, help="uniform weight bits (instead of a run folder)")
    p.add_argument("--config", help="BitConfig JSON file (instead of a run folder)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default %(default)s)")
    p.add_argument("--out", help="output file (default RUN_DIR/model.FORMAT, or ./model.FORMAT)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset {OPSETS[0]}..{OPSETS[-1]}; below 25, 2-bit weights are stored as INT4 "
                        "(default %(default)s)")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default="int",
                   help="ONNX weight types: int (INT2/INT4/INT8) or uint (UINT2/UINT4/UINT8; avoids onnxruntime's "
                        "uint8 x int8 saturation on x86 CPUs without VNNI) (default %(default)s)")
    p.add_argument("--verify", action="store_true",
                   help="run the file in onnxruntime on the test split and compare with mixq's own evaluation")
    p.set_defaults(func=cmd_export)
