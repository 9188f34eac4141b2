"""Benchmark PEM against transformers' Mask2Former-R50 (latency, training steps, GMACs, peak memory): runs
the `benchmarks/benchmark` package; see `--help`. Example, the full benchmark:

    python scripts/benchmark.py --output-dir benchmark_results
"""

import sys
from pathlib import Path

# The benchmark is tooling, kept outside the package, beside its results.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
