"""EMQ: evolutionary search of training-free proxy formulas (genotypes) on an MQ benchmark, and scoring.

    import mixq
    result = mixq.emq.evolve("results/mqbench-resnet20-jpeg.sqlite", "runs/emq", mixq.emq.EMQConfig())
    scores = mixq.emq.score("runs/emq/genotype.json", model, samples, configs)   # no evaluation needed
    bits = mixq.allocate(model, "runs/emq/genotype.json", samples, target_bits=3.0)

Modules: :mod:`~mixq.emq.ops` (the operation registries), :mod:`~mixq.emq.inputs` (per-layer sources),
:mod:`~mixq.emq.genotype` (formulas as data), :mod:`~mixq.emq.interpret` (evaluation with shape
screening), :mod:`~mixq.emq.search` (the screened evolution), :mod:`~mixq.emq.proxy` (a genotype as a
proxy), :mod:`~mixq.emq.run` (benchmark -> search -> held-out comparison), :mod:`~mixq.emq.ranking`
(any proxies against a benchmark), :mod:`~mixq.emq.study` (the leak-free train / validation / test protocol
over one or several benchmarks).
"""

from mixq.emq.genotype import Genotype, crossover, mutate, random_genotype
from mixq.emq.inputs import SOURCES, FormulaInputs, compute_inputs
from mixq.emq.interpret import FormulaError, check_shapes, gain_table, layer_values
from mixq.emq.proxy import FormulaProxy, resolve_proxy
from mixq.emq.proxy import score_configs as score
from mixq.emq.ranking import rank_proxies
from mixq.emq.run import emq_search
from mixq.emq.run import emq_search as evolve
from mixq.emq.search import EMQConfig
from mixq.emq.study import StudyConfig, run_study

__all__ = [
    "SOURCES",
    "EMQConfig",
    "StudyConfig",
    "run_study",
    "emq_search",
    "evolve",
    "rank_proxies",
    "score",
    "FormulaError",
    "FormulaInputs",
    "FormulaProxy",
    "Genotype",
    "check_shapes",
    "compute_inputs",
    "crossover",
    "gain_table",
    "layer_values",
    "mutate",
    "random_genotype",
    "resolve_proxy",
]
