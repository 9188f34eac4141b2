"""Benchmark PEM against transformers' Mask2Former-R50 (latency, training steps, GMACs, peak memory).

Same as `python -m transformers_pem.benchmark`; see `--help`. Example, the full benchmark:

    python scripts/benchmark.py --output-dir benchmark_results
"""

import sys
from pathlib import Path

# Run from a clone without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers_pem.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
