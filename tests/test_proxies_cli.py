"""`mixq bench build` -> `mixq proxies score/rank` -> `mixq allocate`, on the embedded demo."""

import json

import pytest

from mixq.cli import main


def test_bench_proxies_allocate_pipeline(demo_only, tmp_path, capsys, top1_by_hand):
    bench = tmp_path / "b.sqlite"
    assert main(["bench", "build", str(bench), "--n", "5", "--n-test", "30", "--samples", "8",
                 "--no-progress"]) == 0
    jsonl = tmp_path / "b.jsonl"
    assert main(["bench", "export", str(bench), "--out", str(jsonl)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 5 and all("top1" in r and "bits" in r for r in rows)

    scored = tmp_path / "s.jsonl"
    assert main(["proxies", "score", "--proxy", "snip", "--configs", str(jsonl), "--out", str(scored),
                 "--samples", "16", "--n-test", "10", "--proxy-batch", "16"]) == 0
    out = [json.loads(line) for line in scored.read_text().splitlines()]
    assert len(out) == 5 and all(isinstance(r["score"], float) for r in out)

    capsys.readouterr()
    assert main(["proxies", "rank", "--bench", str(bench), "--proxies", "bparams", "snip", "--sample", "4",
                 "--proxy-batch", "16", "--json", str(tmp_path / "rank.json")]) == 0
    text = capsys.readouterr().out
    assert "bparams" in text and "kendall" in text
    assert {r["proxy"] for r in json.loads((tmp_path / "rank.json").read_text())["results"]} == {"bparams", "snip"}

    run = tmp_path / "alloc"
    assert main(["allocate", "--proxy", "hawq-v3", "--target-bits", "3", "--samples", "16", "--n-test", "20",
                 "--proxy-batch", "16", "--no-progress", "--out", str(run)]) == 0
    r = json.loads((run / "result.json").read_text())
    assert r["avg_bits"] <= 3 + 1e-9 and len(r["bits"]) == 20
    from mixq.export.run import model_from_run

    task, qm, calibrated = model_from_run(run, n_test=20)
    assert not calibrated and r["quant_top1"] == pytest.approx(top1_by_hand(qm, task), abs=1e-6)
    assert r["fp32_top1"] == pytest.approx(top1_by_hand(task.model, task), abs=1e-6)


def test_bad_inputs(demo_only, tmp_path, capsys):
    garbage = tmp_path / "g.sqlite"
    garbage.write_bytes(b"not a database" * 50)
    assert main(["proxies", "rank", "--bench", str(garbage)]) == 2
    assert "mixq: error:" in capsys.readouterr().err
    assert main(["allocate", "--target-bits", "1.0", "--samples", "8", "--n-test", "10", "--proxy", "bparams",
                 "--no-progress"]) == 2
    assert "budget" in capsys.readouterr().err
    (tmp_path / "c.jsonl").write_text('{"bits": {"nope": 3}}\n')
    assert main(["proxies", "score", "--proxy", "bparams", "--configs", str(tmp_path / "c.jsonl"),
                 "--out", str(tmp_path / "o.jsonl"), "--samples", "8", "--n-test", "10"]) == 2
    assert "unknown layer" in capsys.readouterr().err


def test_stats_cache_round_trip(tmp_path):
    import numpy as np
    import pytest

    from mixq.errors import MixqError
    from mixq.proxies.base import LayerStats
    from mixq.proxies.cache import StatsCache

    path = tmp_path / "c.npz"
    c = StatsCache(path, "sha-a", ["l1", "l2"])
    gains = np.arange(16, dtype=float).reshape(2, 8)
    c.put(LayerStats("snip", ("l1", "l2"), gains, {}, 1.5), 64, 0)
    c.save()
    hit = StatsCache(path, "sha-a", ["l1", "l2"]).get("snip", 64, 0)
    assert hit is not None and np.array_equal(hit.gains, gains) and hit.seconds == 1.5
    assert StatsCache(path, "sha-a", ["l1", "l2"]).get("snip", 32, 0) is None  # other batch
    assert StatsCache(path, "sha-b", ["l1", "l2"]).get("snip", 64, 0) is None  # other checkpoint: ignored
    path.write_bytes(b"junk")
    with pytest.raises(MixqError, match="corrupt"):
        StatsCache(path, "sha-a", ["l1", "l2"])


def test_rank_with_stats_cache_gives_same_metrics(demo_only, tmp_path, monkeypatch):
    from mixq.proxies.qe import QEScore
    from mixq.proxies.saliency import Snip

    bench = tmp_path / "b.sqlite"
    assert main(["bench", "build", str(bench), "--n", "5", "--n-test", "30", "--samples", "8",
                 "--no-progress"]) == 0
    computed = []
    for cls in (Snip, QEScore):
        def counting(self, *args, _orig=cls._compute, **kwargs):
            computed.append(self.name)
            return _orig(self, *args, **kwargs)
        monkeypatch.setattr(cls, "_compute", counting)
    out, runs = [], []
    for i in range(2):
        js = tmp_path / f"r{i}.json"
        assert main(["proxies", "rank", "--bench", str(bench), "--proxies", "snip", "qe", "--sample", "4",
                     "--proxy-batch", "16", "--stats-cache", str(tmp_path / "cache.npz"), "--json", str(js)]) == 0
        out.append([r["all"] for r in json.loads(js.read_text())["results"]])
        runs.append(sorted(computed))
        computed.clear()
    assert out[0] == out[1] and (tmp_path / "cache.npz").is_file()
    # the first run computes each proxy's statistics once per sampled batch; the second computes none
    assert runs[0] and set(runs[0]) == {"snip", "qe"} and runs[1] == []
