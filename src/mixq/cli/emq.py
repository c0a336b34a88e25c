"""``mixq emq search`` and ``mixq emq allocate``: evolve a proxy formula, allocate bits with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixq.cli.common import EPILOG_DATA, add_allocate_args, add_task_args, allocate_command
from mixq.emq.genotype import STRUCTURES
from mixq.emq.inputs import SOURCES
from mixq.emq.run import emq_search
from mixq.emq.search import METRICS, EMQConfig
from mixq.emq.study import OBJECTIVES, REDUCTIONS, StudyConfig, run_study
from mixq.fileio import locked
from mixq.paths import output_folder
from mixq.reports.emq import comparison_table, write_emq_report


def cmd_emq_search(args: argparse.Namespace) -> int:
    """Search a proxy formula on a benchmark and compare it with the hand-crafted proxies."""
    config = EMQConfig(candidates=args.candidates, population=args.population, structures=tuple(args.structures),
                       sources=tuple(args.sources),
                       metric=args.metric, train_fraction=args.train_fraction, seed=args.seed,
                       proxy_batch=args.proxy_batch, hessian_samples=args.hessian_samples, stability=args.stability)
    with locked(output_folder(args.out)):  # a bad or busy --out fails before any work; the report is covered too
        r = emq_search(args.bench, args.out, config, data_root=args.data_root, model_root=args.model_root,
                       baselines=False if args.no_baselines else (args.baselines or True),
                       progress=not args.no_progress, stats_cache=args.stats_cache, overwrite=args.overwrite)
        write_emq_report(args.out)
    s = r["screening"]
    print(f"best formula: {r['formula']}")
    print(f"train {config.metric} {r['train_fitness']:.3f}; {s['candidates']} candidates in "
          f"{r['search_seconds']:.0f} s, screened {s['screened']} ({100 * s['rate']:.1f} %)")
    print(f"held-out ({r['split']['heldout']} configurations):")
    print(comparison_table(r))
    print(f"wrote {args.out}/genotype.json, formula.txt, history.json, fitness.png, result.json, report.md")
    return 0


def cmd_emq_study(args: argparse.Namespace) -> int:
    """The leak-free study: evolve on the benchmarks' train parts, choose on validation, score test once."""
    search = EMQConfig(candidates=args.candidates, population=args.population, structures=tuple(args.structures),
                       sources=tuple(args.sources), proxy_batch=args.proxy_batch,
                       hessian_samples=args.hessian_samples, stability=args.stability)
    config = StudyConfig(fractions=tuple(args.fractions), split_seed=args.split_seed, seeds=tuple(args.seeds),
                         reduce=args.reduce, objective=args.objective, size_penalty=args.size_penalty,
                         finalists=args.finalists,
                         bootstrap=args.bootstrap, search=search)
    r = run_study(args.bench, args.out, config, transfer=args.transfer or (), fresh=args.fresh or (),
                  baselines=args.baselines or True, data_root=args.data_root, model_root=args.model_root,
                  stats_cache=args.stats_cache, progress=not args.no_progress)
    print(f"chosen formula (seed {r['chosen_seed']}, best on validation): {r['formula']}")
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/study.json, report.md")
    return 0


def cmd_emq_allocate(args: argparse.Namespace) -> int:
    """ILP allocation with an evolved formula, then evaluation (and calibration unless --no-calibrate)."""
    return allocate_command(args, calibrate_after=not args.no_calibrate)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``mixq emq search|allocate``.

    Args:
        sub: the main parser's subparsers.
    """
    epilog = EPILOG_DATA
    d = EMQConfig()
    pe = sub.add_parser("emq", help="EMQ: evolve a proxy formula on a benchmark, allocate bits with it",
                        description="EMQ: evolutionary search of training-free proxy formulas (genotypes) scored "
                                    "by rank correlation with a benchmark's accuracies, and ILP bit allocation "
                                    "with the winner.")
    esub = pe.add_subparsers(dest="emq_command", metavar="ACTION", required=True)
    p = esub.add_parser(
        "search", epilog=epilog,
        help="evolve a proxy formula on a benchmark's training split; report it on the held-out split",
        description="Evolve a proxy formula (tree: two sources, two unary operations each, one binary operation, "
                    "a reduction, a bit-aware aggregation). Fitness is the rank correlation with top-1 on a "
                    "seeded training split of the benchmark; the report gives every metric on the held-out "
                    "split beside every hand-crafted proxy. Rerunning with the same --out and settings resumes; "
                    "other settings (or another benchmark) are refused unless --overwrite.")
    p.add_argument("--bench", required=True, help="benchmark file (mixq bench build)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an earlier search's files in --out instead of resuming it")
    p.add_argument("--candidates", type=int, default=d.candidates, help="formulas to draw (default %(default)s)")
    p.add_argument("--population", type=int, default=d.population, help="population size (default %(default)s)")
    p.add_argument("--structures", nargs="+", choices=sorted(STRUCTURES), default=list(d.structures),
                   help="genotype structures (default %(default)s)")
    p.add_argument("--metric", choices=METRICS, default=d.metric, help="fitness correlation (default %(default)s)")
    p.add_argument("--train-fraction", type=float, default=d.train_fraction,
                   help="share of the benchmark used for fitness (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of split, search and sources (default %(default)s)")
    p.add_argument("--proxy-batch", type=int, default=d.proxy_batch,
                   help="labelled calibration images for the sources (default %(default)s)")
    p.add_argument("--hessian-samples", type=int, default=d.hessian_samples,
                   help="Rademacher vectors of the Hessian diagonal (default %(default)s)")
    p.add_argument("--stability", type=float, default=d.stability,
                   help="screen out a formula whose fitness moves by more than this when every source is "
                        "perturbed by a relative 1e-5 (rounding noise, not signal); 0 = off (default %(default)s)")
    p.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(d.sources),
                   help="input sources the formulas may read (default: all; EMQ's own are act grad weight hessian "
                        "vgrad qerror)")
    p.add_argument("--baselines", nargs="+", metavar="PROXY",
                   help="hand-crafted proxies to rank beside the evolved one (default: all registered)")
    p.add_argument("--no-baselines", action="store_true", help="skip ranking the hand-crafted proxies")
    p.add_argument("--stats-cache", help="reuse / store the hand-crafted proxies' statistics in this .npz file")
    p.add_argument("--data-root")
    p.add_argument("--model-root")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_emq_search)

    sd = StudyConfig()
    p = esub.add_parser(
        "study", epilog=epilog,
        help="evolve a formula on one or more benchmarks with a train / validation / test protocol",
        description="Split each --bench once (--split-seed) into train / validation / test parts. For each "
                    "--seeds value, evolve formulas whose fitness is the worst (or mean) Kendall over the "
                    "benchmarks' train parts minus --size-penalty per operation; choose each seed's formula "
                    "among its --finalists on validation, and the study's among the seeds on validation; pick "
                    "each benchmark's best hand-crafted proxy on validation. Only then score everything on the "
                    "test parts (and on --transfer benchmarks' test parts, --fresh benchmarks in full), with "
                    "bootstrap intervals. Rerunning with the same --out resumes each seed's search.")
    p.add_argument("--bench", nargs="+", required=True, help="benchmarks to evolve on (one per architecture)")
    p.add_argument("--transfer", nargs="+", help="benchmarks not searched, scored on their test part "
                                                 "(leave-one-architecture-out)")
    p.add_argument("--fresh", nargs="+", help="benchmarks of a searched / transfer model from another sampling "
                                              "seed, scored in full")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--fractions", nargs=3, type=float, default=list(sd.fractions), metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of each benchmark (default %(default)s)")
    p.add_argument("--split-seed", type=int, default=sd.split_seed,
                   help="seed of the split and the proxy images, fixed across --seeds (default %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(sd.seeds), help="evolution seeds (default %(default)s)")
    p.add_argument("--reduce", choices=REDUCTIONS, default=sd.reduce,
                   help="how per-benchmark train Kendalls combine (default %(default)s)")
    p.add_argument("--objective", choices=OBJECTIVES, default=sd.objective,
                   help="per-benchmark fitness: its Kendall, or its gain over the benchmark's best hand-crafted "
                        "proxy on the same part (train for the fitness, validation for the choices) "
                        "(default %(default)s)")
    p.add_argument("--size-penalty", type=float, default=sd.size_penalty,
                   help="fitness subtracted per formula operation (default %(default)s)")
    p.add_argument("--finalists", type=int, default=sd.finalists,
                   help="best-on-train formulas per seed compared on validation (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=sd.bootstrap,
                   help="bootstrap resamples per interval (default %(default)s)")
    p.add_argument("--candidates", type=int, default=d.candidates, help="formulas per seed (default %(default)s)")
    p.add_argument("--population", type=int, default=d.population, help="population size (default %(default)s)")
    p.add_argument("--structures", nargs="+", choices=sorted(STRUCTURES), default=list(d.structures),
                   help="genotype structures (default %(default)s)")
    p.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(d.sources),
                   help="input sources the formulas may read (default: all)")
    p.add_argument("--proxy-batch", type=int, default=d.proxy_batch,
                   help="labelled training images for the sources (default %(default)s)")
    p.add_argument("--hessian-samples", type=int, default=d.hessian_samples,
                   help="Rademacher vectors of the Hessian diagonal (default %(default)s)")
    p.add_argument("--stability", type=float, default=d.stability,
                   help="screen out a formula whose fitness moves by more than this when every source is "
                        "perturbed by a relative 1e-5 (rounding noise, not signal); 0 = off (default %(default)s)")
    p.add_argument("--baselines", nargs="+", metavar="PROXY", help="hand-crafted proxies (default: all registered)")
    p.add_argument("--stats-cache", help="folder of per-model .npz caches of the hand-crafted statistics")
    p.add_argument("--data-root")
    p.add_argument("--model-root")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_emq_study)

    p = esub.add_parser("allocate", epilog=epilog,
                        help="ILP bit allocation with an evolved proxy, then calibration and evaluation",
                        description="Choose one bit-width per layer with scipy.optimize.milp on the evolved "
                                    "formula's per-layer gains, evaluate on the test split beside FP32, then "
                                    "run EvoQ's feature calibration and evaluate again.")
    add_task_args(p)
    p.add_argument("--proxy", required=True, help="genotype.json written by `mixq emq search` (or a proxy name)")
    add_allocate_args(p)
    p.add_argument("--no-calibrate", action="store_true", help="skip the feature calibration")
    p.set_defaults(func=cmd_emq_allocate)
