"""``mixq proxies list|rank|score`` and ``mixq allocate``: training-free proxies and ILP bit allocation."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mixq.errors import MixqError


def _proxy_stats(task, qm, name: str, batch: int, seed: int, cache=None):
    from mixq.emq.proxy import resolve_proxy
    from mixq.proxies.cache import cached_stats

    proxy = resolve_proxy(name)
    n = min(batch, task.calib.shape[0])
    stats = cached_stats(qm, proxy, task.calib[:n], task.calib_set.labels[:n], seed, cache)
    return proxy, stats, stats.seconds


def _read_configs(path: str, layer_names: list[str]) -> list[dict]:
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise MixqError(f"cannot read configurations {path!r}: {exc.strerror}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            bits = row["bits"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MixqError(f"{path}:{i}: expected a JSON object with a 'bits' mapping per line") from None
        from mixq.bits import BitConfig

        BitConfig.from_dict(bits, source=f"{path}:{i}").validate(layer_names)
        rows.append(row)
    if not rows:
        raise MixqError(f"{path!r} holds no configurations")
    return rows


def cmd_proxies_list(args: argparse.Namespace) -> int:
    """List the registered proxies."""
    from mixq.proxies import get_proxy, list_proxies

    print(f"{'proxy':10} {'labels':>6}  description")
    for name in list_proxies():
        p = get_proxy(name)
        doc = (type(p).__doc__ or "").strip().splitlines()[0]
        print(f"{name:10} {'yes' if p.needs_labels else 'no':>6}  {doc}")
    return 0


def cmd_proxies_score(args: argparse.Namespace) -> int:
    """Score every configuration of a JSON Lines file with one proxy."""
    from mixq.bits import BitConfig
    from mixq.cli.main import _load_task
    from mixq.proxies import bits_matrix
    from mixq.quant.model import QuantModel

    task = _load_task(args)
    qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
    rows = _read_configs(args.configs, qm.layer_names)
    proxy, stats, secs = _proxy_stats(task, qm, args.proxy, args.proxy_batch, args.seed)
    bits = bits_matrix([BitConfig.from_dict(r["bits"]) for r in rows], qm.layer_names)
    scores = proxy.score(stats, bits)
    with open(args.out, "w") as fh:
        for row, s in zip(rows, scores):
            fh.write(json.dumps({**row, "score": float(s), "proxy": args.proxy}) + "\n")
    print(f"scored {len(rows)} configurations with {args.proxy} (statistics {secs:.1f} s) -> {args.out}")
    return 0


def cmd_proxies_rank(args: argparse.Namespace) -> int:
    """Every proxy's rank correlation with a benchmark's accuracies."""
    from mixq.bench import MQBench
    from mixq.evaluation.task import load_task
    from mixq.proxies import list_proxies
    from mixq.proxies.rank import rank_metrics
    from mixq.quant.model import QuantModel

    bench = MQBench.open(args.bench, readonly=True)
    entries = bench.entries()
    if len(entries) < 3:
        raise MixqError(f"benchmark {args.bench!r} holds {len(entries)} configurations; ranking needs at least 3")
    model = bench.meta.get("model")
    task = load_task(model, samples=max(args.proxy_batch, 1), seed=args.seed, data_root=args.data_root,
                     model_root=args.model_root, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    if list(bench.meta["layer_names"]) != qm.layer_names:
        raise MixqError(f"benchmark {args.bench!r} has other layers than model {model!r}")
    names = args.proxies or list_proxies()
    bits = np.array([e.bits_tuple for e in entries])
    acc = np.array([e.top1 for e in entries])
    sample = np.random.default_rng(args.seed).choice(len(entries), size=min(args.sample, len(entries)),
                                                     replace=False)
    results = []
    cache = None
    if args.stats_cache:
        from mixq.proxies.cache import StatsCache

        cache = StatsCache(args.stats_cache, str(bench.meta.get("checkpoint_sha256")), qm.layer_names)
    for name in names:
        proxy, stats, secs = _proxy_stats(task, qm, name, args.proxy_batch, args.seed, cache)
        t0 = time.perf_counter()
        scores = proxy.score(stats, bits)
        secs_score = time.perf_counter() - t0
        results.append({"proxy": name, "stats_seconds": secs, "score_seconds": secs_score,
                        f"sample{len(sample)}": rank_metrics(scores[sample], acc[sample]),
                        "all": rank_metrics(scores, acc)})
    header = (f"{'proxy':10} {'':7} {'kendall':>8} {'spearman':>8} {'pearson':>8} {'sp@50%':>7} {'sp@20%':>7} "
              f"{'stats s':>8}")
    print(f"{args.bench}: {len(entries)} configurations of {model}; sample of {len(sample)} (seed {args.seed})")
    print(header)
    for r in results:
        for key in (f"sample{len(sample)}", "all"):
            m = r[key]
            print(f"{r['proxy'] if key != 'all' else '':10} {key:7} {m['kendall']:8.3f} {m['spearman']:8.3f} "
                  f"{m['pearson']:8.3f} {m['spearman_top50']:7.3f} {m['spearman_top20']:7.3f} "
                  f"{r['stats_seconds'] if key != 'all' else float('nan'):8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bench": args.bench, "model": model, "results": results}, indent=1))
    return 0


def cmd_allocate(args: argparse.Namespace) -> int:
    """ILP bit allocation with a proxy's per-layer costs, then evaluation."""
    from mixq.allocate.ilp import allocate_config
    from mixq.bits import Budget
    from mixq.cli.main import _load_task
    from mixq.evoq.calibrate import CalibrationConfig, calibrate
    from mixq.provenance import versions
    from mixq.quant.model import QuantModel

    if args.target_bits is None and args.size_mb is None:
        args.target_bits = 3.0
    budget = Budget(avg_bits=args.target_bits, size_mb=args.size_mb)
    task = _load_task(args)
    qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
    proxy, stats, secs = _proxy_stats(task, qm, args.proxy, args.proxy_batch, args.seed)
    costs = proxy.layer_costs(stats, args.bit_choices)
    max_bitops = args.max_gbitops * 1e9 if args.max_gbitops is not None else None
    x_shape = tuple(task.calib.shape[1:]) if max_bitops is not None else None
    cfg = allocate_config(qm, costs, budget, bit_choices=args.bit_choices, max_bitops=max_bitops, x_shape=x_shape)
    qm.set_bits(cfg)
    progress = not args.no_progress
    r = {"model": task.name, "proxy": args.proxy, "proxy_name": proxy.name, "budget_avg_bits": args.target_bits,
         "budget_size_mb": args.size_mb, "max_gbitops": args.max_gbitops, "avg_bits": qm.avg_bits(),
         "size_mb": qm.size_mb(), "proxy_seconds": secs, "samples": int(task.calib.shape[0]), "seed": args.seed,
         "n_test": len(task.test), "fp32_top1": task.top1(task.model, progress=progress, desc="fp32"),
         "quant_top1": task.top1(qm, progress=progress, desc="allocated")}
    if args.calibrate:
        ccfg = CalibrationConfig(seed=args.seed)
        calibrate(qm, task.calib, ccfg, progress=progress)
        r["calibrated_top1"] = task.top1(qm, progress=progress, desc="calibrated")
    r["bits"] = dict(cfg.weights)
    r["versions"] = versions()
    label = "emq" if args.proxy.endswith(".json") else args.proxy
    out = Path(args.out or f"runs/allocate-{label}-{args.target_bits or args.size_mb}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    (out / "result.json").write_text(json.dumps(r, indent=1))
    print(f"{task.name}, {args.proxy} + ILP: {r['avg_bits']:.3f} avg bits, {r['size_mb']:.4f} MB; "
          f"top-1 FP32 {r['fp32_top1']:.2f}, allocated {r['quant_top1']:.2f}"
          + (f", calibrated {r['calibrated_top1']:.2f}" if "calibrated_top1" in r else ""))
    print(f"wrote {out}/config.json and result.json")
    return 0


def add_proxy_commands(sub: argparse._SubParsersAction, add_task_args, epilog: str) -> None:
    """Register ``proxies`` and ``allocate`` on the main parser.

    Args:
        sub: the main parser's subparsers.
        add_task_args: the shared model/data argument adder.
        epilog: the shared data-location epilog.
    """
    pp = sub.add_parser("proxies", help="training-free proxies: list, rank against a benchmark, score configs")
    psub = pp.add_subparsers(dest="proxies_command", metavar="ACTION", required=True)
    p = psub.add_parser("list", help="list the registered proxies")
    p.set_defaults(func=cmd_proxies_list)

    p = psub.add_parser("rank", help="rank correlation of every proxy with a benchmark's accuracies",
                        epilog=epilog)
    p.add_argument("--bench", required=True, help="benchmark file (mixq bench build)")
    p.add_argument("--proxies", nargs="+", help="proxies to rank (default: all)")
    p.add_argument("--sample", type=int, default=50, help="size of the seeded sample (default %(default)s)")
    p.add_argument("--proxy-batch", type=int, default=64, help="images for the proxy statistics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root")
    p.add_argument("--model-root")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--stats-cache", help="reuse / store proxy statistics in this .npz file (they depend on the "
                                          "model, batch and seed, not on the benchmark)")
    p.set_defaults(func=cmd_proxies_rank)

    p = psub.add_parser("score", help="score configurations from a JSON Lines file", epilog=epilog)
    add_task_args(p)
    p.add_argument("--proxy", required=True,
                   help="proxy name (see `mixq proxies list`) or an evolved genotype.json (mixq emq search)")
    p.add_argument("--configs", required=True, help="JSON Lines, one {\"bits\": {layer: bits}, ...} per line")
    p.add_argument("--out", required=True, help="output JSON Lines (input rows plus `score`)")
    p.add_argument("--proxy-batch", type=int, default=64, help="images for the proxy statistics")
    p.set_defaults(func=cmd_proxies_score)

    p = sub.add_parser("allocate", help="ILP bit allocation from a proxy's per-layer costs (scipy milp)",
                       epilog=epilog)
    add_task_args(p)
    p.add_argument("--proxy", default="hawq-v3",
                   help="additive proxy for the costs, a registered name or a genotype.json (default %(default)s)")
    add_allocate_args(p)
    p.add_argument("--calibrate", action="store_true", help="also run feature calibration and report it")
    p.set_defaults(func=cmd_allocate)


def add_allocate_args(p: argparse.ArgumentParser) -> None:
    """The budget and solver arguments shared by ``mixq allocate`` and ``mixq emq allocate``.

    Args:
        p: the parser.
    """
    p.add_argument("--target-bits", type=float, help="average weight bits budget (default 3.0)")
    p.add_argument("--size-mb", type=float, help="weight size budget in MB")
    p.add_argument("--max-gbitops", type=float, help="BitOps budget per sample, in GBitOps")
    p.add_argument("--bit-choices", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    p.add_argument("--proxy-batch", type=int, default=64, help="images for the proxy statistics")
    p.add_argument("--out", help="output folder (default runs/allocate-PROXY-BUDGET)")
