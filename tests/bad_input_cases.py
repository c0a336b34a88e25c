"""Every bad input README lists, with the command that gives it; the source of README's bad-input table.

``python tests/bad_input_cases.py`` runs each case on the embedded demo in a scratch folder and prints the
markdown table that README carries between its ``bad-input-table`` markers; ``tests/test_bad_input.py``
runs each case again and checks the exit code (2), that the error is one line with no traceback, and that
the line is the one README shows.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

USER_MODEL = "mixq.models.resnet_cifar:resnet20"


def _nan_checkpoint(folder: Path) -> None:
    import torch

    from mixq.models.resnet_cifar import resnet20

    state = resnet20().state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, folder / "nan.pt")


def _wrong_keys_checkpoint(folder: Path) -> None:
    import torch

    torch.save({"not_a_layer.weight": torch.zeros(2)}, folder / "keys.pt")


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        what: the bad input, in words (README's first column).
        argv: the ``mixq`` arguments that give it.
        files: file name -> text to create in the scratch folder first.
        setup: optional function writing more files into the scratch folder.
    """

    what: str
    argv: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None


CASES: list[Case] = [
    Case("bit-width below 2", ("eval", "--bits", "1")),
    Case("bit-width above 8 (not 32)", ("eval", "--bits", "9")),
    Case("both --bits and --config", ("eval", "--bits", "4", "--config", "c.json"), {"c.json": "{}"}),
    Case("unknown model name", ("eval", "--bits", "4", "--model", "resnet21")),
    Case("model factory that is not a model", ("eval", "--bits", "4", "--model", "os:getcwd")),
    Case("model factory that does not exist", ("eval", "--bits", "4", "--model", "mixq.models.zoo:nothing")),
    Case("model that does not return logits", ("eval", "--bits", "4", "--model", "torch.nn:Identity")),
    Case("model with no layer to quantize", ("eval", "--bits", "4", "--model", "torch.nn:Flatten")),
    Case("missing checkpoint file", ("eval", "--bits", "4", "--model", USER_MODEL, "--checkpoint", "none.pt")),
    Case("corrupt checkpoint file", ("eval", "--bits", "4", "--model", USER_MODEL, "--checkpoint", "bad.pt"),
         {"bad.pt": "not a torch file"}),
    Case("checkpoint for another model", ("eval", "--bits", "4", "--model", USER_MODEL, "--checkpoint", "keys.pt"),
         setup=_wrong_keys_checkpoint),
    Case("checkpoint with a NaN weight", ("eval", "--bits", "4", "--model", USER_MODEL, "--checkpoint", "nan.pt"),
         setup=_nan_checkpoint),
    Case("missing bit configuration", ("eval", "--config", "none.json")),
    Case("bit configuration that is not JSON", ("eval", "--config", "c.json"), {"c.json": "{not json"}),
    Case("bit configuration naming an unknown layer", ("eval", "--config", "c.json"), {"c.json": '{"conv9": 4}'}),
    Case("bit configuration missing layers", ("eval", "--config", "c.json"), {"c.json": '{"conv1": 4}'}),
    Case("bit configuration with a bad bit-width", ("eval", "--config", "c.json"), {"c.json": '{"conv1": 12}'}),
    Case("batch size 0", ("eval", "--bits", "4", "--batch-size", "0")),
    Case("no calibration samples", ("eval", "--bits", "4", "--samples", "0")),
    Case("more calibration samples than train images", ("eval", "--bits", "4", "--samples", "100000")),
    Case("activation bits out of range", ("eval", "--bits", "4", "--act-bits", "1")),
    Case("test subset of 0 images", ("eval", "--bits", "4", "--n-test", "0")),
    Case("data folder that does not exist", ("eval", "--bits", "4", "--data-root", "nowhere")),
    Case("checkpoint folder that does not exist", ("eval", "--bits", "4", "--model-root", "nowhere")),
    Case("budget below 2 average bits", ("evoq", "--target-bits", "1.5")),
    Case("budget above 8 average bits", ("evoq", "--target-bits", "9")),
    Case("size budget smaller than all-2-bit", ("evoq", "--size-mb", "0.00001")),
    Case("population below 2", ("evoq", "--population", "1")),
    Case("--out naming a file", ("evoq", "--out", "afile"), {"afile": "x"}),
    Case("--out under a file", ("evoq", "--out", "afile/run"), {"afile": "x"}),
    Case("unknown proxy", ("allocate", "--proxy", "hawq-v9")),
    Case("allocation budget below 2 bits", ("allocate", "--proxy", "bops", "--target-bits", "1.5")),
    Case("missing benchmark file", ("proxies", "rank", "--bench", "none.mqbench")),
    Case("corrupt benchmark file", ("bench", "info", "bad.mqbench"), {"bad.mqbench": "not sqlite"}),
    Case("unsupported ONNX opset", ("export", "--bits", "4", "--opset", "19", "--out", "m.onnx")),
    Case("corrupt genotype file", ("emq", "allocate", "--proxy", "g.json"), {"g.json": "{not json"}),
    Case("recalibrating a folder with no finished run", ("recalibrate", "runs/none")),
    Case("recalibrating a corrupt run result", ("recalibrate", "r"), {"r/result.json": "{not json"}),
]


def run_case(case: Case, folder: Path) -> tuple[int, str]:
    """Run one case with the embedded demo as the only data, in ``folder``.

    Args:
        case: the case.
        folder: an empty scratch folder (becomes the working directory).

    Returns:
        ``(exit code, stderr)``.
    """
    from mixq import paths
    from mixq.cli import main

    for name, text in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    if case.setup is not None:
        case.setup(folder)
    saved = (os.getcwd(), paths._shared_candidates, {k: os.environ.pop(k, None) for k in ("MIXQ_DATA", "MIXQ_MODELS")})
    paths._shared_candidates = lambda: []
    os.chdir(folder)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            progress = () if case.argv[0] in ("proxies", "bench") else ("--no-progress",)
            code = main([*case.argv, *progress])
    finally:
        os.chdir(saved[0])
        paths._shared_candidates = saved[1]
        os.environ.update({k: v for k, v in saved[2].items() if v is not None})
    return code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The ``mixq: error:`` lines of a command's stderr (warnings printed before them are not errors).

    Args:
        stderr: what the command wrote.

    Returns:
        Those lines.
    """
    return [ln for ln in stderr.splitlines() if ln.startswith("mixq: error: ")]


def table_row(case: Case, stderr: str) -> str:
    """README's row for a case: the input, the command and the message.

    Args:
        case: the case.
        stderr: what the command wrote.

    Returns:
        One markdown table row.
    """
    message = "; ".join(error_lines(stderr)).removeprefix("mixq: error: ").replace("|", "\\|")
    return f"| {case.what} | `mixq {' '.join(case.argv)}` | {message} |"


def table() -> str:
    """The whole markdown table, from running every case.

    Returns:
        The table text.
    """
    rows = ["| bad input | command | message (exit code 2) |", "| --- | --- | --- |"]
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            code, stderr = run_case(case, Path(d))
        if code != 2:
            raise SystemExit(f"case {case.what!r} exited {code}: {stderr}")
        rows.append(table_row(case, stderr))
    return "\n".join(rows)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    sys.stdout.write(table() + "\n")
