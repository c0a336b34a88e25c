"""MQ benchmark: (bit configuration, quantized top-1) pairs for ranking mixed-precision proxies.

    from mixq.bench import build_benchmark, MQBench
    bench = build_benchmark("resnet20.mqbench", "resnet20-jpeg", n=200)   # resumable
    bench = MQBench.open("resnet20.mqbench", expect_model="resnet20-jpeg")
    e = bench.get(0); bench.query(e.bits); train, held = bench.split(0.8, seed=0)
    bench.to_jsonl("resnet20.jsonl")

See :mod:`mixq.bench.store` for the file format, :mod:`mixq.bench.sampling` for how configurations
are drawn and :mod:`mixq.bench.build` for how they are labelled.
"""

from mixq.bench.build import QUANTIZER, build_benchmark, checkpoint_sha256
from mixq.bench.sampling import DEFAULT_CHOICES, MODES, average_bits, sample_configs
from mixq.bench.store import FORMAT, SCHEMA_VERSION, Entry, MQBench

__all__ = [
    "DEFAULT_CHOICES",
    "FORMAT",
    "MODES",
    "QUANTIZER",
    "SCHEMA_VERSION",
    "Entry",
    "MQBench",
    "average_bits",
    "build_benchmark",
    "checkpoint_sha256",
    "sample_configs",
]
