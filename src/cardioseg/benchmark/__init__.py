"""The generalisation lab's benchmark: protocols, resumable runs and reports.

Example:
    >>> from cardioseg.benchmark import run_benchmark
    >>> run_benchmark("configs/protocols/acdc_to_mnms.yaml", "bench/acdc_to_mnms")  # doctest: +SKIP
"""

from cardioseg.benchmark.protocol import Protocol, RunSpec, load_protocol, plan
from cardioseg.benchmark.runner import BenchmarkResult, run_benchmark

__all__ = ["BenchmarkResult", "Protocol", "RunSpec", "load_protocol", "plan", "run_benchmark"]
