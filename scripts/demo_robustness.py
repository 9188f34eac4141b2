"""Rerun `make demo` over thread counts and training seeds, and report the range of its metrics.

A change of float order (another CPU, another thread count) changes a training run from random weights the way
another seed does, so seeds stand in for other machines. Each run writes its own folder under `--output-dir`;
the table of all runs, min–max per metric and the spread go to `robustness.md` and `robustness.json` there. Runs
with one thread can share the cores (`--jobs 2` on 2 cores): that changes how long they take, not their results.
A run whose folder already holds its `demo_summary.json` is not repeated (delete the folder to rerun it).

    python scripts/demo_robustness.py --threads 1 2 --seeds 0 1 2 --jobs 2
"""

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU")
# What every run must reach, and the largest allowed max - min over the runs (PQ and mIoU).
TARGETS = {"mIoU": 80.0, "PQ_th": 30.0}
MAX_SPREAD = 3.0


def run_demo(output_dir: Path, threads: int, seed: int) -> dict:
    if (output_dir / "demo_summary.json").is_file():  # finished in an earlier, interrupted check
        return json.loads((output_dir / "demo_summary.json").read_text())
    command = [
        sys.executable,
        "scripts/demo.py",
        f"--output-dir={output_dir}",
        f"--threads={threads}",
        f"--seed={seed}",
    ]
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "demo.log", "w") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads((output_dir / "demo_summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time (only runs of one thread share).")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "demo_robustness")
    args = parser.parse_args(argv)

    runs = [(threads, seed) for threads in args.threads for seed in args.seeds]
    summaries: dict[tuple[int, int], dict] = {}
    for threads in args.threads:
        jobs = args.jobs if threads == 1 else 1
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            futures = {
                seed: executor.submit(run_demo, args.output_dir / f"threads{threads}-seed{seed}", threads, seed)
                for seed in args.seeds
            }
            for seed, future in futures.items():
                summaries[threads, seed] = future.result()
                print(f"threads {threads}, seed {seed}: {summaries[threads, seed]['metrics']}", flush=True)

    lines = ["| threads | seed | " + " | ".join(METRICS) + " | minutes |", "|" + "---|" * (len(METRICS) + 3)]
    for threads, seed in runs:
        summary = summaries[threads, seed]
        values = " | ".join(f"{summary['metrics'][key]:.1f}" for key in METRICS)
        lines.append(f"| {threads} | {seed} | {values} | {summary['minutes']} |")
    ranges = {
        key: [min(s["metrics"][key] for s in summaries.values()), max(s["metrics"][key] for s in summaries.values())]
        for key in METRICS
    }
    lines.append("| min–max | | " + " | ".join(f"{low:.1f}–{high:.1f}" for low, high in ranges.values()) + " | |")
    failures = [f"{key} {low:.1f} < {target}" for key, target in TARGETS.items() if (low := ranges[key][0]) < target]
    failures += [
        f"{key} spread {high - low:.1f} > {MAX_SPREAD}"
        for key in ("PQ", "mIoU")
        if (high := ranges[key][1]) - (low := ranges[key][0]) > MAX_SPREAD
    ]
    lines += ["", "Robust: every target met." if not failures else "Not robust: " + "; ".join(failures) + "."]
    report = "\n".join(lines) + "\n"
    (args.output_dir / "robustness.md").write_text(report)
    results = {"runs": [{"threads": t, "seed": s, **summaries[t, s]} for t, s in runs], "ranges": ranges}
    (args.output_dir / "robustness.json").write_text(json.dumps(results, indent=1))
    print(report)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
