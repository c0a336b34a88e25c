"""Proxy speed, as ratios measured in one run on this machine.

For every registered proxy on one mini-batch: the one-off statistics time, and the time to score 1,000
random bit configurations divided by one forward+backward pass of the (folded, float) model on the same
mini-batch. The issue's bar is a ratio below 3.

    python benchmarks/proxy_speed.py [--model resnet20-jpeg] [--batch 64] [--proxies hawq-v2 snip]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from mixq.evaluation.task import load_task
from mixq.provenance import versions
from mixq.proxies import get_proxy, list_proxies, stats_for
from mixq.quant.model import QuantModel
from mixq.timing import median_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20-jpeg")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--configs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--proxies", nargs="*", default=None, help="default: all registered")
    args = ap.parse_args()
    task = load_task(args.model, samples=args.batch, n_test=10)
    x, y = task.calib, task.calib_set.labels
    qm = QuantModel(task.model, calib=x)
    n_layers = len(qm.layer_names)

    def fwd_bwd() -> None:
        weights = [m.weight for m in qm.layers.values()]
        with qm.float_mode():
            for w in weights:
                w.requires_grad_(True)
            try:
                torch.autograd.grad(F.cross_entropy(qm(x), y), weights)
            finally:
                for w in weights:
                    w.requires_grad_(False)

    t_fb = median_seconds(fwd_bwd, args.repeats)
    bits = np.random.default_rng(0).integers(2, 9, size=(args.configs, n_layers))
    print(f"{args.model}: {n_layers} layers, batch {args.batch}, one forward+backward = {t_fb * 1e3:.1f} ms")
    rows = []
    for name in args.proxies or list_proxies():
        proxy = get_proxy(name)
        stats = stats_for(qm, proxy, x, y, seed=0)
        t_score = median_seconds(lambda proxy=proxy, stats=stats: proxy.score(stats, bits), max(args.repeats, 20))
        ratio = t_score / t_fb
        rows.append({"proxy": name, "stats_s": stats.seconds, "stats_over_fwd_bwd": stats.seconds / t_fb,
                     "score_s": t_score, "score_over_fwd_bwd": ratio})
        print(f"{name:9s} stats {stats.seconds:8.2f} s ({stats.seconds / t_fb:7.1f} fwd+bwd)   "
              f"score {args.configs} configs / one forward+backward = {ratio:.5f}")
    print(json.dumps({"model": args.model, "batch": args.batch, "configs": args.configs, "fwd_bwd_s": t_fb,
                      "torch_threads": torch.get_num_threads(), "rows": rows, **versions()}))


if __name__ == "__main__":
    main()
