"""``mixq proxies list|rank|score``: training-free proxies, ranked against a benchmark or scoring configs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixq.bits import BitConfig
from mixq.cli.common import EPILOG_DATA, add_executor_args, add_task_args, executor_from_args, task_from_args
from mixq.emq.proxy import proxy_stats_on
from mixq.emq.ranking import rank_proxies
from mixq.errors import MixqError
from mixq.proxies import bits_matrix, get_proxy, list_proxies
from mixq.quant.model import QuantModel


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
        BitConfig.from_dict(bits, source=f"{path}:{i}").validate(layer_names)
        rows.append(row)
    if not rows:
        raise MixqError(f"{path!r} holds no configurations")
    return rows


def cmd_proxies_list(args: argparse.Namespace) -> int:
    """List the registered proxies."""
    print(f"{'proxy':10} {'labels':>6}  description")
    for name in list_proxies():
        p = get_proxy(name)
        doc = (type(p).__doc__ or "").strip().splitlines()[0]
        print(f"{name:10} {'yes' if p.needs_labels else 'no':>6}  {doc}")
    return 0


def cmd_proxies_score(args: argparse.Namespace) -> int:
    """Score every configuration of a JSON Lines file with one proxy."""
    task = task_from_args(args)
    qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
    rows = _read_configs(args.configs, qm.layer_names)
    proxy, stats = proxy_stats_on(task, qm, args.proxy, args.proxy_batch, args.seed)
    bits = bits_matrix([BitConfig.from_dict(r["bits"]) for r in rows], qm.layer_names)
    scores = proxy.score(stats, bits)
    with open(args.out, "w") as fh:
        for row, s in zip(rows, scores):
            fh.write(json.dumps({**row, "score": float(s), "proxy": args.proxy}) + "\n")
    print(f"scored {len(rows)} configurations with {args.proxy} (statistics {stats.seconds:.1f} s) -> {args.out}")
    return 0


def cmd_proxies_rank(args: argparse.Namespace) -> int:
    """Every proxy's rank correlation with a benchmark's accuracies."""
    with executor_from_args(args) as executor:
        r = rank_proxies(args.bench, args.proxies, sample=args.sample, proxy_batch=args.proxy_batch, seed=args.seed,
                         data_root=args.data_root, model_root=args.model_root, stats_cache=args.stats_cache,
                         executor=executor)
    sample_key = f"sample{r['sample']}"
    header = (f"{'proxy':10} {'':7} {'kendall':>8} {'spearman':>8} {'pearson':>8} {'sp@50%':>7} {'sp@20%':>7} "
              f"{'stats s':>8}")
    print(f"{args.bench}: {r['entries']} configurations of {r['model']}; sample of {r['sample']} (seed {args.seed})")
    print(header)
    for row in r["results"]:
        for key in (sample_key, "all"):
            m = row[key]
            print(f"{row['proxy'] if key != 'all' else '':10} {key:7} {m['kendall']:8.3f} {m['spearman']:8.3f} "
                  f"{m['pearson']:8.3f} {m['spearman_top50']:7.3f} {m['spearman_top20']:7.3f} "
                  f"{row['stats_seconds'] if key != 'all' else float('nan'):8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bench": args.bench, "model": r["model"], "results": r["results"]},
                                              indent=1))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``proxies list|rank|score``.

    Args:
        sub: the main parser's subparsers.
    """
    epilog = EPILOG_DATA
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
    add_executor_args(p, "the proxy statistics (one proxy per item)")
    p.set_defaults(func=cmd_proxies_rank)

    p = psub.add_parser("score", help="score configurations from a JSON Lines file", epilog=epilog)
    add_task_args(p)
    p.add_argument("--proxy", required=True,
                   help="proxy name (see `mixq proxies list`) or an evolved genotype.json (mixq emq search)")
    p.add_argument("--configs", required=True, help="JSON Lines, one {\"bits\": {layer: bits}, ...} per line")
    p.add_argument("--out", required=True, help="output JSON Lines (input rows plus `score`)")
    p.add_argument("--proxy-batch", type=int, default=64, help="images for the proxy statistics")
    p.set_defaults(func=cmd_proxies_score)
