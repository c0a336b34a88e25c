"""`mixq emq search` -> `mixq proxies score --proxy genotype.json` -> `mixq emq allocate`, on the embedded demo."""

import json

import pytest

from mixq.cli import main


def test_emq_search_score_allocate(demo_only, tmp_path, capsys, top1_by_hand):
    bench = tmp_path / "b.sqlite"
    assert main(["bench", "build", str(bench), "--n", "12", "--n-test", "30", "--samples", "8",
                 "--no-progress"]) == 0
    out = tmp_path / "emq"
    args = ["emq", "search", "--bench", str(bench), "--out", str(out), "--candidates", "80", "--population", "10",
            "--proxy-batch", "16", "--hessian-samples", "2", "--baselines", "bparams", "snip", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "best formula: S(b) =" in text and "| **evolved** |" in text
    for name in ("genotype.json", "formula.txt", "history.json", "fitness.png", "result.json", "report.md",
                 "search_state.json"):
        assert (out / name).is_file(), name
    r = json.loads((out / "result.json").read_text())
    assert r["screening"]["candidates"] == 80 and r["split"] == {"train": 6, "heldout": 6, "seed": 0}
    assert {p["proxy"] for p in r["proxies"]} >= {"evolved", "snip", "bparams"}
    assert "torch" in r["versions"]
    # a rerun resumes from the finished checkpoint and gives the same formula
    assert main(args) == 0
    assert json.loads((out / "result.json").read_text())["formula"] == r["formula"]

    jsonl = tmp_path / "b.jsonl"
    assert main(["bench", "export", str(bench), "--out", str(jsonl)]) == 0
    scored = tmp_path / "s.jsonl"
    assert main(["proxies", "score", "--proxy", str(out / "genotype.json"), "--configs", str(jsonl),
                 "--out", str(scored), "--samples", "16", "--n-test", "10", "--proxy-batch", "16"]) == 0
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(x["score"], float) for x in rows)

    run = tmp_path / "alloc"
    assert main(["emq", "allocate", "--proxy", str(out / "genotype.json"), "--target-bits", "3",
                 "--bit-choices", "2", "3", "4", "8", "--samples", "16", "--n-test", "20", "--proxy-batch", "16",
                 "--no-calibrate", "--no-progress", "--out", str(run)]) == 0
    a = json.loads((run / "result.json").read_text())
    assert a["avg_bits"] <= 3 + 1e-9 and a["proxy_name"].startswith("emq:")
    from mixq.export.run import model_from_run

    task, qm, _ = model_from_run(run, n_test=20)  # the reported top-1 is that of the saved configuration
    assert a["quant_top1"] == pytest.approx(top1_by_hand(qm, task), abs=1e-6)
    assert qm.avg_bits() == pytest.approx(a["avg_bits"])


def test_emq_bad_inputs(demo_only, tmp_path, capsys):
    bad = tmp_path / "g.json"
    bad.write_text('{"format": "mixq-emq-genotype", "version": 1, "structure": "tree"}')
    assert main(["emq", "allocate", "--proxy", str(bad), "--samples", "8", "--n-test", "10", "--no-progress"]) == 2
    assert "malformed genotype" in capsys.readouterr().err
    garbage = tmp_path / "b.sqlite"
    garbage.write_bytes(b"junk" * 100)
    assert main(["emq", "search", "--bench", str(garbage), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "mixq: error:" in capsys.readouterr().err
    assert main(["emq", "search", "--bench", str(garbage), "--out", str(tmp_path / "o"), "--population", "1"]) == 2
    assert "population" in capsys.readouterr().err
