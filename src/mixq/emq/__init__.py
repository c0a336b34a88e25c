"""EMQ: evolutionary search of training-free proxy formulas (genotypes), and bit allocation with them.

    from mixq.emq import Genotype, FormulaProxy, EMQConfig, emq_search
    result = emq_search("results/mqbench-resnet20-jpeg.sqlite", "runs/emq", EMQConfig(candidates=1000))
    proxy = FormulaProxy(Genotype.load("runs/emq/genotype.json"))
"""

from mixq.emq.genotype import Genotype, crossover, mutate, random_genotype
from mixq.emq.inputs import SOURCES, FormulaInputs, compute_inputs
from mixq.emq.interpret import FormulaError, check_shapes, gain_table, layer_values
from mixq.emq.proxy import FormulaProxy, resolve_proxy

__all__ = [
    "SOURCES",
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
