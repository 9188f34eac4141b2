"""scripts/gpu_check.py on CPU at small sizes: every check runs and its summary holds what a maintainer reads."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path, capsys):
    gpu_check = load_script()
    output = tmp_path / "summary.json"
    summary = gpu_check.main(["--device", "cpu", "--small", "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(capsys.readouterr().out) == summary
    assert set(summary["parity"]) == set(gpu_check.PRESETS)
    for differences in summary["parity"].values():
        for key in ("class_queries_logits", "masks_queries_logits"):
            # On CPU the "device" run is CPU float32 itself: the same distance from float64.
            assert differences[key]["device"] == differences[key]["cpu_fp32"] < 1e-3
    assert summary["autocast"]["bf16"]["finite"] and summary["autocast"]["bf16"]["max_difference"] < 0.5
    training = summary["training"]
    assert all(training[variant]["finite_gradients"] for variant in ("plain", "amp", "checkpointing"))
    assert training["checkpointing"]["loss"] == training["plain"]["loss"]
    assert training["checkpointing"]["max_gradient_difference"] == 0.0
    assert summary["deformable_convolution"]["max_difference"] < 1e-4
    fps = summary["fps"]
    assert fps["pem-r50"]["fps"] > 0 and fps["mask2former-r50"]["fps"] > 0
    assert fps["speed_ratio"] == pytest.approx(fps["mask2former-r50"]["seconds"] / fps["pem-r50"]["seconds"])


def test_gpu_check_refuses_a_missing_gpu(capsys):
    gpu_check = load_script()
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--device", "gpu"], "--device must be"),
        (["--device", "meta"], "--device must be"),
        (["--device", "cpu", "--output", "/nonexistent-folder/summary.json"], "does not exist"),
        (["--devcie", "cpu"], "unrecognized arguments"),
    ],
)
def test_gpu_check_refuses_bad_arguments_in_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit):
        load_script().main(arguments)
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
