"""Interrupted and repeated work (#14): kill -9 and rerun, stale settings refused, locks, atomic files.

The runs use a five-layer network (``resume_net:build``, written into the test folder) on the embedded
demo data, so every `mixq` command here takes a second or two. ``$RESUME_NET_SLEEP`` slows its forward
pass in the subprocesses that are killed, so that the kill lands mid-run; sleeping changes no number.
All processes run single-threaded, so float sums agree between the killed process and this one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mixq.bench.store import MQBench
from mixq.cli import main
from mixq.errors import MixqError
from mixq.fileio import atomic_path, atomic_write_json, check_signature, lock_file_of, locked

NET = '''
import os
import time

import torch
from torch import nn


class Net(nn.Sequential):
    def forward(self, x):
        time.sleep(float(os.environ.get("RESUME_NET_SLEEP", "0")))
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return Net(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
               nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(16, 10))
'''
LAUNCH = ("import sys, mixq.paths as p; p._shared_candidates = lambda: []; from mixq.cli import main; "
          "sys.exit(main(sys.argv[1:]))")  # the embedded demo data, as the demo_only fixture gives in-process
EVOQ = ["evoq", "--model", "resume_net:build", "--samples", "8", "--n-test", "40", "--target-bits", "3.5",
        "--iterations", "120", "--mutation-prob", "0.4", "--no-calibrate", "--no-progress"]
BENCH = ["bench", "build", "--model", "resume_net:build", "-n", "12", "--samples", "8", "--n-test", "40",
         "--no-progress"]
ACCURACIES = ("fp32_top1", "search_top1", "uniform_top1", "quant_top1")


@pytest.fixture
def net(demo_only, tmp_path, monkeypatch):
    """The tiny network in the (current) test folder, one thread here as in the subprocesses."""
    (tmp_path / "resume_net.py").write_text(NET)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv("RESUME_NET_SLEEP", raising=False)
    yield tmp_path
    torch.set_num_threads(threads)


def _start(cwd: Path, argv: list[str], sleep: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MIXQ_DATA", "MIXQ_MODELS")}
    env.update(OMP_NUM_THREADS="1", RESUME_NET_SLEEP=str(sleep))
    return subprocess.Popen([sys.executable, "-c", LAUNCH, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(what: str, ready, proc: subprocess.Popen, timeout: float = 90.0):
    """Poll ``ready()`` until it returns a true value while ``proc`` still runs."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        value = ready()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _iteration(path: Path) -> int:
    state = _json(path)
    return state["state"]["iteration"] if state else 0


def _same_run(a: dict, b: dict) -> None:
    assert a["bits"] == b["bits"] and a["fitness"] == b["fitness"]
    assert a["best_history"] == b["best_history"] and a["mean_history"] == b["mean_history"]
    assert a["evaluations"] == b["evaluations"] and a["iterations"] == b["iterations"]
    assert [a.get(k) for k in ACCURACIES] == [b.get(k) for k in ACCURACIES]


# -- EvoQ ----------------------------------------------------------------------------------------------
def test_evoq_killed_mid_search_resumes_to_the_uninterrupted_result(net, capsys):
    out = net / "killed"
    proc = _start(net, [*EVOQ, "--out", str(out)], sleep=0.02)
    state = out / "search_state.json"
    _wait_for("the search started", lambda: _iteration(state) >= 2, proc)
    # meanwhile a second run into the same folder stops at once with one clear error
    assert main([*EVOQ, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another mixq run" in err and str(out) in err
    _wait_for("generation 10", lambda: _iteration(state) >= 10, proc)
    _kill(proc)
    done = _iteration(state)
    assert 10 <= done < 120 and not (out / "result.json").exists()
    assert main([*EVOQ, "--out", str(out)]) == 0  # resumes
    resumed = json.loads((out / "result.json").read_text())
    assert main([*EVOQ, "--out", str(net / "fresh")]) == 0
    fresh = json.loads((net / "fresh" / "result.json").read_text())
    _same_run(resumed, fresh)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    # timings count the killed process's part too: its sensitivity table (read back from the file) and search
    measured = json.loads((out / "sensitivity.json").read_text())["seconds"]
    assert resumed["sensitivity_resumed"] and not fresh["sensitivity_resumed"]
    assert resumed["sensitivity_seconds"] == measured > 0
    for r in (resumed, fresh):
        assert r["total_seconds"] >= r["search_seconds"] + r["sensitivity_seconds"]


def test_evoq_checkpoints_every_generation(net, monkeypatch):
    from mixq.evoq import bitsearch

    step = bitsearch.TournamentEvolution.step

    def dying(self):
        if self.state.iteration == 7:
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(bitsearch.TournamentEvolution, "step", dying)
    assert main([*EVOQ, "--out", str(net / "r")]) == 130
    assert _iteration(net / "r" / "search_state.json") == 7  # nothing lost but the child in flight


def test_unfinished_search_resumes_under_other_calibration_settings(net, monkeypatch, capsys):
    """Calibration comes after the search: changing its settings keeps an unfinished search, not a finished run."""
    from mixq.evoq import bitsearch

    step = bitsearch.TournamentEvolution.step

    def dying(self):
        if self.state.iteration == 7:
            raise KeyboardInterrupt
        step(self)

    calibrated = [*EVOQ[:-2], "--calib-epochs", "2", "--no-progress"]
    with monkeypatch.context() as m:
        m.setattr(bitsearch.TournamentEvolution, "step", dying)
        assert main([*EVOQ, "--out", str(net / "r")]) == 130  # started without calibration
    capsys.readouterr()
    assert main([*calibrated, "--out", str(net / "r")]) == 0  # resumed, then calibrated
    assert main([*calibrated, "--out", str(net / "fresh")]) == 0
    resumed, fresh = (json.loads((net / d / "result.json").read_text()) for d in ("r", "fresh"))
    _same_run(resumed, fresh)
    assert resumed["calibration"]["epochs"] == 2
    # the finished run is not overwritten by a rerun with still other calibration settings
    before = (net / "r" / "result.json").read_bytes()
    assert main([*calibrated[:-3], "--calib-epochs", "3", "--no-progress", "--out", str(net / "r")]) == 2
    err = capsys.readouterr().err
    assert "belongs to a finished run that was made with other settings (calibration.epochs: 2 -> 3)" in err
    assert "mixq recalibrate" in err and err.count("\n") == 1, err
    assert (net / "r" / "result.json").read_bytes() == before


def test_evoq_offspring_batches_go_through_the_executor_and_resume(net, monkeypatch):
    import mixq.cli.common as common
    from mixq.evoq import bitsearch
    from mixq.executor import SerialExecutor

    batches: list[int] = []

    class Spy(SerialExecutor):
        def session(self, state):
            inner = super().session(state)
            real = inner.map

            def spying_map(fn, items, *a, **kw):
                if fn is bitsearch._fitness_item:
                    batches.append(len(items))
                return real(fn, items, *a, **kw)

            inner.map = spying_map
            return inner

    monkeypatch.setattr(common, "make_executor", lambda *a, **kw: Spy())
    argv = [*EVOQ, "--offspring", "4"]
    assert main([*argv, "--out", str(net / "full")]) == 0
    full = json.loads((net / "full" / "result.json").read_text())
    assert full["settings"]["offspring"] == 4 and full["iterations"] == 120
    assert full["executor"] == {"executor": "serial", "workers": 1}
    # the initial population, then 30 generations of at most 4 new children each
    assert batches[0] <= 16 and len(batches) <= 31 and all(1 <= b <= 4 for b in batches[1:])
    assert sum(batches) == full["evaluations"]
    step = bitsearch.TournamentEvolution.step

    def dying(self):
        if self.state.iteration == 40:
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(bitsearch.TournamentEvolution, "step", dying)
    assert main([*argv, "--out", str(net / "cut")]) == 130
    assert _iteration(net / "cut" / "search_state.json") == 40  # ten whole generations kept
    monkeypatch.setattr(bitsearch.TournamentEvolution, "step", step)
    assert main([*argv, "--out", str(net / "cut")]) == 0
    _same_run(json.loads((net / "cut" / "result.json").read_text()), full)


def test_rerun_with_other_settings_is_refused_naming_them(net, capsys):
    out = net / "run"
    assert main([*EVOQ, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for flags, named in [(["--samples", "12"], ["task.samples: 8 -> 12", "task.calib_sha256: '"]),
                         (["--act-bits", "6"], ["act_bits: 8 -> 6"]),
                         (["--weight-range", "omse"], ["weight_range: 'minmax' -> 'omse'"]),
                         (["--target-bits", "3.0"], ["budget.avg_bits: 3.5 -> 3.0", "limit: "]),
                         (["--mutation", "random"], ["settings.mutation: 'guided' -> 'random'"]),
                         (["--seed", "1"], ["task.seed: 0 -> 1", "settings.seed: 0 -> 1"]),
                         (["--calib-epochs", "3", "--no-uniform"], ["evaluate_uniform: True -> False"])]:
        argv = [*EVOQ, "--out", str(out), *flags]
        assert main(argv) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("mixq: error: search checkpoint") and err.count("\n") == 1, err
        assert all(n in err for n in named) and "--overwrite" in err, err
    assert main([*EVOQ, "--out", str(out), "--iterations", "60"]) == 2  # a shorter search ends elsewhere
    assert "already run 120, more than the 60 asked for" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched
    # the sensitivity cache carries its own signature
    (out / "search_state.json").unlink()
    assert main([*EVOQ, "--out", str(out), "--act-bits", "6"]) == 2
    err = capsys.readouterr().err
    assert "sensitivity table" in err and "act_bits: 8 -> 6" in err
    # --overwrite discards the old run: the result is a fresh run's
    assert main([*EVOQ, "--out", str(out), "--act-bits", "6", "--overwrite"]) == 0
    assert main([*EVOQ, "--out", str(net / "fresh"), "--act-bits", "6"]) == 0
    _same_run(json.loads((out / "result.json").read_text()), json.loads((net / "fresh" / "result.json").read_text()))
    assert json.loads((out / "result.json").read_text())["act_bits"] == 6


def test_same_seed_gives_identical_bits_and_accuracies(net):
    argv = [*EVOQ[:-2], "--calib-epochs", "3", "--no-progress"]  # with feature calibration
    runs = []
    for name in ("a", "b"):
        assert main([*argv, "--out", str(net / name)]) == 0
        runs.append(json.loads((net / name / "result.json").read_text()))
    _same_run(*runs)
    assert runs[0]["calibration"]["loss_final"] == runs[1]["calibration"]["loss_final"]
    a, b = (torch.load(net / n / "calibrated.pt", weights_only=True)["state_dict"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- benchmark ------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[tuple]:
    with MQBench.open(path, readonly=True) as bench:
        return [(e.idx, e.bits_tuple, e.top1) for e in bench.entries()]


def _count(path: Path) -> int:
    try:
        with MQBench.open(path, readonly=True) as bench:
            return len(bench)
    except MixqError:
        return 0


def test_bench_build_killed_resumes_without_duplicates(net):
    path = net / "b.sqlite"
    proc = _start(net, [*BENCH[:2], str(path), *BENCH[2:]], sleep=0.15)
    _wait_for("three labels", lambda: _count(path) >= 3, proc)
    _kill(proc)
    assert 3 <= _count(path) < 12
    assert main([*BENCH[:2], str(path), *BENCH[2:]]) == 0
    assert main([*BENCH[:2], str(net / "ref.sqlite"), *BENCH[2:]]) == 0
    rows = _rows(path)
    assert rows == _rows(net / "ref.sqlite") and len({r[1] for r in rows}) == len(rows) == 12


def test_two_shards_on_a_fresh_file_both_work(net):
    path = net / "s.sqlite"
    procs = [_start(net, [*BENCH[:2], str(path), *BENCH[2:], "--shard", f"{i}/2"], sleep=0.0) for i in (0, 1)]
    for p in procs:
        text, _ = p.communicate(timeout=120)
        assert p.returncode == 0, text
    assert main([*BENCH[:2], str(net / "ref.sqlite"), *BENCH[2:]]) == 0
    rows, ref = _rows(path), _rows(net / "ref.sqlite")
    assert {r[1]: r[2] for r in rows} == {r[1]: r[2] for r in ref} and len(rows) == 12
    with MQBench.open(path, readonly=True) as bench:
        assert len(bench.meta["sessions"]) == 2


# -- EMQ ------------------------------------------------------------------------------------------------
def test_emq_search_killed_resumes_and_refuses_another_bench(net, capsys):
    bench = net / "b.sqlite"
    assert main([*BENCH[:2], str(bench), *BENCH[2:]]) == 0
    emq = ["emq", "search", "--bench", str(bench), "--candidates", "1500", "--population", "10",
           "--proxy-batch", "8", "--hessian-samples", "2", "--no-baselines", "--no-progress"]
    out = net / "emq"
    proc = _start(net, [*emq, "--out", str(out)], sleep=0.0)
    state = out / "search_state.json"
    _wait_for("a checkpoint mid-search", lambda: _iteration(state) > 0, proc)
    _kill(proc)
    assert not (out / "result.json").exists()
    assert main([*emq, "--out", str(out)]) == 0
    assert main([*emq, "--out", str(net / "fresh")]) == 0
    resumed, fresh = (json.loads((d / "result.json").read_text()) for d in (out, net / "fresh"))
    assert resumed["genotype"] == fresh["genotype"] and resumed["train_fitness"] == fresh["train_fitness"]
    assert resumed["screening"] == fresh["screening"]
    assert json.loads((out / "history.json").read_text()) == json.loads((net / "fresh" / "history.json").read_text())
    # another benchmark (other content) into the same folder is refused, naming it; --overwrite starts over
    other = net / "other.sqlite"
    assert main([*BENCH[:2], str(other), *BENCH[2:-1], "--seed", "1", "--no-progress"]) == 0
    argv = [*emq[:3], str(other), *emq[4:], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "search checkpoint" in err and "bench: " in err and "bench_sha256: " in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["bench"] == str(other)


# -- the helpers ----------------------------------------------------------------------------------------
def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # fails half-way through
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with atomic_path(path) as one, atomic_path(path) as two:
        assert one != two and one.parent == two.parent == tmp_path  # unique temporary names
        one.write_text("1")
        two.write_text("2")
    assert path.read_text() == "1"
    with pytest.raises(FileExistsError), atomic_path(path, replace=False) as tmp:
        tmp.write_text("3")
    assert path.read_text() == "1" and len(list(tmp_path.iterdir())) == 1


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_lock_is_exclusive_reentrant_and_names_the_folder(tmp_path):
    with locked(tmp_path) as lock_file:
        with locked(tmp_path):  # the same process may lock again
            pass
        errors = []

        def other() -> None:
            try:
                with locked(tmp_path, timeout=0.05):
                    pass
            except MixqError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1 and f"output folder {str(tmp_path)!r} is in use by another mixq run" in errors[0]
        assert lock_file == tmp_path / ".mixq.lock"
    with locked(tmp_path, timeout=0.05):  # released
        pass
    assert lock_file_of(tmp_path / "b.sqlite") == tmp_path / ".b.sqlite.mixq.lock"  # a file's lock: beside it
    with pytest.raises(MixqError, match="does not exist"):
        with locked(tmp_path / "no" / "file.sqlite", what="benchmark file"):
            pass


def test_signature_mismatch_names_every_setting():
    with pytest.raises(MixqError) as exc:
        check_signature({"a": 1, "b": {"c": [1, 2]}, "gone": 0}, {"a": 1, "b": {"c": (1, 3)}, "new": "x"},
                        "state 'f'", "use --overwrite")
    assert str(exc.value) == ("state 'f' was made with other settings (b.c: [1, 2] -> [1, 3]; new: (not recorded) "
                              "-> 'x'; gone: 0 -> (not recorded)); use --overwrite")
    check_signature({"t": (1, 2)}, {"t": [1, 2]}, "s", "h")  # JSON-equal values match
