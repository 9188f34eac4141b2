"""Evaluation spread over processes (`torchrun`, 2 CPU processes with gloo): the metrics and the exported files
equal one process's exactly, on an odd number of images (uneven shards), for the three tasks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_configs import save_confident_cityscapes_checkpoint

# Several processes (torchrun): run by `make test`, left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531"]


@pytest.fixture(scope="module")
def data(synthetic_cityscapes) -> Path:
    return synthetic_cityscapes(num_train=0, num_val=5, size=(64, 128), seed=5)


def run(command: list[str]) -> str:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def exported_files(export: Path) -> dict[str, bytes]:
    return {str(path.relative_to(export)): path.read_bytes() for path in sorted(export.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_two_processes_give_the_one_process_metrics_and_files(data, tmp_path, task):
    """`evaluate_model` of a stand-in model with imperfect predictions (IoUs below 1, missed things): the metrics
    of 2 processes equal one process's to the last bit, and the exported files are byte-identical."""
    results, files = {}, {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        output, export = tmp_path / f"{name}.json", tmp_path / f"{name}-export"
        stdout = run([*launcher, "tests/shifted_oracle_evaluation.py", str(data), task, str(output), str(export)])
        assert ("process 1 of 2" in stdout) == (name == "two")
        results[name], files[name] = json.loads(output.read_text()), exported_files(export)
    assert results["two"] == results["one"]
    headline = {"semantic": "mIoU", "panoptic": "PQ", "instance": "AP"}[task]
    assert 20 < float(results["one"][headline]) < 100  # imperfect predictions: non-trivial sums
    assert files["two"] == files["one"]
    expected = {"semantic": "semantic/", "panoptic": "panoptic.json", "instance": "instances.json"}[task]
    assert any(name.startswith(expected) for name in files["one"])
    if task == "panoptic":
        annotations = json.loads(files["one"]["panoptic.json"])["annotations"]
        assert len(annotations) == 5 and len({a["image_id"] for a in annotations}) == 5  # once each


def test_the_evaluation_command_under_torchrun(data, tmp_path):
    """`scripts/evaluate_checkpoint.py` under torchrun: one report and one results file, equal to one process's."""
    save_confident_cityscapes_checkpoint(tmp_path / "model")
    reports, results = {}, {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        output = tmp_path / f"{name}.json"
        reports[name] = run([*launcher, "scripts/evaluate_checkpoint.py", str(tmp_path / "model"),
                             "--dataset=cityscapes", f"--data-root={data}", "--split=val", "--task=panoptic",
                             f"--output={output}", "--no-progress"])  # fmt: skip
        results[name] = json.loads(output.read_text())
    assert results["two"]["metrics"] == results["one"]["metrics"] and results["two"]["num_images"] == 5
    assert reports["two"].count("| PQ | PQ_th |") == reports["one"].count("| PQ | PQ_th |") == 1
