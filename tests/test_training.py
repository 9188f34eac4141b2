"""scripts/train.py: the official optimiser/schedule, atomic checkpoints, exact resume, two-process training."""

import inspect
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest
import torch
from huggingface_hub import HfApi
from tiny_configs import TINY_DECODER

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor
from transformers_pem.cli import main as cli
from transformers_pem.data.loaders import load_cityscapes
from transformers_pem.training.batch_norm import recompute_batch_norm
from transformers_pem.training.checkpoints import latest_checkpoint
from transformers_pem.training.config import TrainingConfig
from transformers_pem.training.loop import train
from transformers_pem.training.optimization import build_optimizer, build_scheduler
from transformers_pem.training.scalars import plot_training_curves, read_scalars

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "backbone_config": {"model_type": "stdc", "base_channels": 16, "layers": [1, 1, 1]},
    **TINY_DECODER,
    "decoder_layers": 2,
    "train_num_points": 256,
}


@pytest.fixture(scope="module")
def cityscapes_root(synthetic_cityscapes) -> Path:
    return synthetic_cityscapes(num_train=6, num_val=2, size=(64, 128), seed=1)


def train_command(data_root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "scripts/train.py",
        "--preset=pem-stdc1-cityscapes-semantic",
        f"--config-overrides={json.dumps(TINY)}",
        f"--data-root={data_root}",
        f"--output-dir={output_dir}",
        "--scale=0.0625",
        "--batch-size=2",
        "--max-steps=6",
        "--learning-rate=1e-3",
        "--save-every=2",
        "--eval-every=0",
        *extra,
    ]


def run(command: list[str], launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *command], cwd=ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_state(output_dir: Path) -> dict:
    return json.loads((output_dir / "final" / "training_state.json").read_text())


def test_batch_size_one_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="at least 2 images per process"):
        TrainingConfig(data_root=tmp_path, output_dir=tmp_path, batch_size=1)
    from transformers_pem.cli.train import parse_args

    with pytest.raises(SystemExit):
        parse_args([f"--data-root={tmp_path}", f"--output-dir={tmp_path}", "--batch-size=1"])


def test_official_recipes():
    def recipe(preset: str, **settings) -> dict:
        return TrainingConfig(data_root=".", output_dir=".", preset=preset, **settings).recipe()

    assert recipe("pem-r50-cityscapes-semantic")["learning_rate"] == 7e-4
    assert recipe("pem-r50-cityscapes-panoptic")["max_steps"] == 90_000
    ade = recipe("pem-r50-ade20k-semantic")
    assert (ade["learning_rate"], ade["max_steps"]) == (4e-4, 160_000)
    assert ade["end_learning_rate_ratio"] == pytest.approx(1e-6 / 4e-4)
    assert (ade["weight_decay"], ade["backbone_lr_multiplier"], ade["clip_grad_norm"], ade["warmup_steps"]) == (
        0.05,
        0.1,
        0.01,
        0,
    )
    assert recipe("pem-stdc1-ade20k-semantic")["max_steps"] == 90_000  # the config file name's schedule
    # Settings given win over the recipe; without a preset, a short fine-tuning schedule.
    custom_rate = recipe("pem-r50-ade20k-semantic", learning_rate=1e-3, warmup_steps=10)
    assert custom_rate["learning_rate"] == 1e-3 and custom_rate["warmup_steps"] == 10
    assert custom_rate["end_learning_rate_ratio"] == ade["end_learning_rate_ratio"]  # as before the restructure
    custom = TrainingConfig(data_root=".", output_dir=".", preset=None, model_name_or_path="some/model").recipe()
    assert (custom["learning_rate"], custom["max_steps"], custom["weight_decay"]) == (1e-4, 1000, 0.05)


def test_command_line_builds_the_training_config(tmp_path):
    from transformers_pem.cli.train import parse_args

    config, _ = parse_args(
        [
            f"--data-root={tmp_path}",
            f"--output-dir={tmp_path}",
            "--preset=pem-stdc1-cityscapes-panoptic",
            "--task=panoptic",
            '--config-overrides={"num_queries": 10}',
            '--id2label={"0": "a", "1": "b"}',
            "--test-size",
            "64",
            "128",
            "--max-steps=7",
        ]
    )
    assert config == TrainingConfig(
        data_root=str(tmp_path),
        output_dir=str(tmp_path),
        preset="pem-stdc1-cityscapes-panoptic",
        task="panoptic",
        config_overrides={"num_queries": 10},
        id2label={0: "a", 1: "b"},
        test_size=(64, 128),
        max_steps=7,
    )
    with pytest.raises(SystemExit):
        parse_args([f"--data-root={tmp_path}", f"--output-dir={tmp_path}", "--preset=pem-r18-cityscapes-semantic"])


def test_optimizer_groups_follow_the_official_rules():
    model = PEMForUniversalSegmentation(PEMConfig.from_preset("pem-stdc1-cityscapes-semantic", **TINY))
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.05, backbone_lr_multiplier=0.1)
    settings = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            settings[id(parameter)] = (group["lr"], group["weight_decay"])
    names = dict(model.named_parameters())
    assert len(settings) == len(names)
    backbone_conv = names["model.pixel_level_module.encoder.features.0.conv.weight"]
    backbone_norm = names["model.pixel_level_module.encoder.features.0.bn.weight"]
    assert settings[id(backbone_conv)] == pytest.approx((1e-4, 0.05))
    assert settings[id(backbone_norm)] == pytest.approx((1e-4, 0.0))
    assert settings[id(names["model.transformer_module.queries_features.weight"])] == pytest.approx((1e-3, 0.0))
    assert settings[id(names["model.transformer_module.layernorm.weight"])] == pytest.approx((1e-3, 0.0))
    assert settings[id(names["class_predictor.weight"])] == pytest.approx((1e-3, 0.05))


def test_frozen_backbone_batch_norm_does_not_change_and_saves_as_batch_norm():
    """--freeze-backbone-batch-norm (the official ADE20K R50 FrozenBN): statistics and affine parameters stay fixed in
    training, and the saved model has ordinary BatchNorm layers with the same values."""
    from torchvision.ops import FrozenBatchNorm2d

    from transformers_pem.training.batch_norm import freeze_batch_norm, plain_batch_norm

    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(PEMConfig.from_preset("pem-stdc1-cityscapes-semantic", **TINY))
    backbone = model.model.pixel_level_module.encoder
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "bn" in k and "num_batches" not in k}
    freeze_batch_norm(backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    optimizer = build_optimizer(model.train(), learning_rate=1e-2, weight_decay=0.05, backbone_lr_multiplier=1.0)
    images = torch.randn(2, 3, 64, 64)
    masks = [torch.ones(1, 64, 64), torch.ones(1, 64, 64)]
    loss = model(images, mask_labels=masks, class_labels=[torch.tensor([1]), torch.tensor([2])]).loss
    loss.backward()
    optimizer.step()
    after = {k: v for k, v in backbone.state_dict().items() if k in before}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    with torch.no_grad():
        frozen_output = model(images).masks_queries_logits
        plain_batch_norm(model)
        plain_output = model(images).masks_queries_logits
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    torch.testing.assert_close(plain_output, frozen_output)


def test_cosine_schedule_matches_detectron2():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=4e-4)
    scheduler = build_scheduler(optimizer, max_steps=100, end_learning_rate_ratio=1e-6 / 4e-4)
    learning_rates = []
    for _ in range(101):
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in (0, 25, 50, 100):
        expected = 1e-6 + (4e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * step / 100))
        assert learning_rates[step] == pytest.approx(expected)


def test_recompute_batch_norm_averages_evaluation_inputs(cityscapes_root):
    """The running statistics of every BatchNorm become the plain average of its per-batch input statistics over the
    training images resized as for evaluation (3 batches of 2: equal weights per batch)."""
    torch.manual_seed(0)
    model = PEMForUniversalSegmentation(PEMConfig.from_preset("pem-stdc1-cityscapes-semantic", **TINY)).eval()
    processor = PEMImageProcessor.from_preset(
        "pem-stdc1-cityscapes-semantic", size={"shortest_edge": 64, "longest_edge": 128}
    )
    dataset = load_cityscapes(cityscapes_root, split="train")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means, variances = {id(m): [] for m in norms}, {id(m): [] for m in norms}

    def record(module, inputs, output):
        x = inputs[0].double()
        means[id(module)].append(x.mean(dim=(0, 2, 3)))
        variances[id(module)].append(x.var(dim=(0, 2, 3), unbiased=True))

    model.train()
    hooks = [m.register_forward_hook(record) for m in norms]
    with torch.no_grad():
        for start in (0, 2, 4):
            images = [example["image"] for example in dataset.select(range(start, start + 2))]
            model(processor(images, return_tensors="pt")["pixel_values"])
    for hook in hooks:
        hook.remove()
    model.eval()

    recompute_batch_norm(model, processor, dataset, batch_size=2, num_batches=3)
    assert not model.training
    for module in norms:
        expected_mean = torch.stack(means[id(module)]).mean(dim=0).float()
        expected_var = torch.stack(variances[id(module)]).mean(dim=0).float()
        torch.testing.assert_close(module.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(module.running_var, expected_var, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_saves_a_loadable_model(cityscapes_root, tmp_path):
    run(train_command(cityscapes_root, tmp_path, "--freeze-backbone-batch-norm"))
    assert final_state(tmp_path)["step"] == 6
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert not list(tmp_path.glob("*.tmp"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    model, loading = PEMForUniversalSegmentation.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert loading["missing_keys"] == set() or loading["missing_keys"] == [], loading
    assert model.config.num_labels == 19 and model.config.hidden_dim == 32
    assert (tmp_path / "final" / "preprocessor_config.json").exists()
    # The scalars of every step, as JSON lines, and the curves drawn from them (2 panels: no evaluation).
    entries = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in entries] == [1, 2, 3, 4, 5, 6]
    assert set(entries[0]) == {"step", "train/loss", "train/loss_cross_entropy", "train/loss_mask", "train/loss_dice",
                               "train/lr"}  # fmt: skip
    assert [entry["train/loss"] for entry in entries] == final_state(tmp_path)["last_losses"]
    assert all(entry["train/loss"] > entry["train/loss_dice"] > 0 for entry in entries)
    with PIL.Image.open(tmp_path / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size == (1000, 400)


def test_activation_checkpointing_trains_to_the_same_weights(cityscapes_root, tmp_path, monkeypatch):
    """`activation_checkpointing` (`pem train --activation-checkpointing`) recomputes the blocks, whose gradients and
    BatchNorm statistics are the plain run's: bit-identical weights."""
    import transformers.modeling_utils

    checkpoint, calls = transformers.modeling_utils.checkpoint, []

    def counted_checkpoint(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted_checkpoint)
    config = dict(data_root=cityscapes_root, preset="pem-stdc1-cityscapes-semantic", config_overrides=TINY,
                  scale=0.0625, batch_size=2, max_steps=2, eval_every=0, save_every=0)  # fmt: skip
    plain = train(TrainingConfig(output_dir=tmp_path / "plain", **config))
    assert calls == []
    checkpointed = train(TrainingConfig(output_dir=tmp_path / "checkpointed", activation_checkpointing=True, **config))
    assert len(calls) >= 2 * 8  # per step at least the 3 STDC stages, 3 pixel-decoder blocks, 2 decoder layers
    assert checkpointed["last_losses"] == plain["last_losses"]
    assert checkpointed["weights_sha256"] == plain["weights_sha256"]


def _complete(path: Path) -> bool:
    return (path / "trainer_state.json").exists()


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_weights(cityscapes_root, tmp_path):
    """A soak of kill points (SIGKILL): during a checkpoint write, between steps after a checkpoint, and during the
    final save; each run resumes from what the last one left, and the end result is bit-identical."""
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    run(train_command(cityscapes_root, uninterrupted))

    rng = random.Random(0)
    kill_points = [
        lambda: any(interrupted.glob("checkpoint-2.tmp")),  # mid-write of the first checkpoint
        lambda: _complete(interrupted / "checkpoint-2"),  # then a random moment of steps 3-4
        lambda: any(interrupted.glob("checkpoint-4.tmp")),
        lambda: _complete(interrupted / "checkpoint-4"),
        lambda: (interrupted / "final").exists(),  # mid-write of the final model
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for index, reached in enumerate(kill_points):
        command = train_command(cityscapes_root, interrupted, *(["--resume"] if index else []))
        process = subprocess.Popen(
            [sys.executable, *command], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.time() + 300
        while not reached() and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        if index % 2:
            time.sleep(rng.uniform(0.0, 0.5))
        process.kill()
        _, stderr = process.communicate()
        assert process.returncode in (-signal.SIGKILL, 0), stderr.decode()[-3000:]

    result = run(train_command(cityscapes_root, interrupted, "--resume"))
    assert "Resumed from" in result.stdout + result.stderr
    assert final_state(interrupted)["weights_sha256"] == final_state(uninterrupted)["weights_sha256"]
    # The scalars of the steps run twice (after a kill) appear once, equal to the uninterrupted run's.
    assert (interrupted / "scalars.jsonl").read_text() == (uninterrupted / "scalars.jsonl").read_text()


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint(cityscapes_root, tmp_path):
    uninterrupted, damaged = tmp_path / "uninterrupted", tmp_path / "damaged"
    run(train_command(cityscapes_root, uninterrupted))
    shutil.copytree(uninterrupted, damaged, ignore=shutil.ignore_patterns("final"))
    weights = damaged / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    result = run(train_command(cityscapes_root, damaged, "--resume"))
    output = result.stdout + result.stderr
    assert "checkpoint-4 is unreadable" in output and "falling back to checkpoint-2" in output
    assert "Resumed from" in output and "checkpoint-2 at step 2" in output
    assert final_state(damaged)["weights_sha256"] == final_state(uninterrupted)["weights_sha256"]


@pytest.mark.slow
def test_two_processes_keep_identical_replicas(cityscapes_root, tmp_path):
    """Two CPU processes: identical replicas, and the evaluation spread over both (process 0's BatchNorm statistics)
    equals one process's evaluation of the saved model."""
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517")
    command = train_command(cityscapes_root, tmp_path, "--max-steps=2", "--batch-size=2", "--eval-every=2")
    result = run(command, launcher)
    state = final_state(tmp_path)
    assert state["replicas_identical"] is True, result.stdout
    assert state["step"] == 2
    from transformers_pem.evaluation.evaluate import evaluate_model

    model = PEMForUniversalSegmentation.from_pretrained(tmp_path / "final")
    processor = PEMImageProcessor.from_pretrained(tmp_path / "final")
    dataset = load_cityscapes(cityscapes_root, split="val", task="semantic")
    expected = evaluate_model(model, processor, dataset, task="semantic", progress=False)
    assert state["eval"] == {key: expected[key] for key in ("mIoU", "mAcc", "pAcc")}


@pytest.mark.slow
def test_finetune_notebook_runs_on_a_custom_folder(tmp_path, monkeypatch):
    """notebooks/finetune.ipynb, executed offline on its synthetic folder dataset with a tiny model."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PEM_MAX_STEPS", "4")
    monkeypatch.setenv("PEM_CONFIG_OVERRIDES", json.dumps(TINY))
    monkeypatch.setenv("PEM_OUTPUT", str(tmp_path / "run"))
    notebook = nbformat.read(ROOT / "notebooks" / "finetune.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    state = json.loads((tmp_path / "run" / "final" / "training_state.json").read_text())
    assert state["step"] == 4 and 0 <= state["eval"]["mIoU"] <= 100
    model = PEMForUniversalSegmentation.from_pretrained(tmp_path / "run" / "final")
    assert model.config.id2label == {0: "background", 1: "square", 2: "disc"} and model.config.thing_ids == [1, 2]
    # The last cell: Trainer's evaluation, with the metrics of PEMTrainerMetrics.
    results = [output for output in notebook.cells[-1].outputs if output.get("output_type") == "execute_result"]
    assert results and all(f"'eval_{name}'" in results[0]["data"]["text/plain"] for name in ("mIoU", "mAcc", "pAcc"))


def test_curves_of_a_run_that_evaluated(tmp_path, capsys):
    """Three panels with evaluation entries; a re-evaluation at the same step replaces the first; `pem plot` draws
    them on demand and fails in one line on a folder without scalars."""
    lines = [{"step": step, "train/loss": 10.0 / step, "train/loss_dice": 1.0 / step, "train/lr": 1e-3} for step in
             range(1, 41)]  # fmt: skip
    lines += [{"step": 20, "eval/PQ": 30.0, "eval/mIoU": 50.0}, {"step": 40, "eval/PQ": 40.0, "eval/mIoU": 60.0}]
    lines.append({"step": 40, "eval/PQ": 45.0, "eval/mIoU": 61.0})  # after BatchNorm recomputation
    (tmp_path / "scalars.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    series = read_scalars(tmp_path / "scalars.jsonl")
    assert series["eval/PQ"] == ([20, 40], [30.0, 45.0])
    assert series["train/loss"][0] == list(range(1, 41)) and series["train/loss"][1][3] == 2.5
    path = plot_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    with PIL.Image.open(path) as curves:
        assert curves.size == (1500, 400)
    path.unlink()
    assert cli.main(["plot", str(tmp_path), "--output", str(tmp_path / "mine.png")]) == 0
    assert (tmp_path / "mine.png").is_file() and capsys.readouterr().out.strip() == str(tmp_path / "mine.png")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", str(tmp_path / "nothing")])
    assert exit_info.value.code == 1 and "No scalars.jsonl" in capsys.readouterr().err


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi` (offline): checks each call against the real signature, records it."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        inspect.signature(HfApi.create_repo).bind(self, repo_id, **kwargs)
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        inspect.signature(HfApi.upload_folder).bind(self, **kwargs)
        files = sorted(path.name for path in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", kwargs["repo_id"], files))


def test_push_to_hub_publishes_the_model_with_its_card_and_curves(cityscapes_root, tmp_path, monkeypatch):
    """`push_to_hub` at the end of training and `pem evaluate --push-to-hub` after an evaluation: the final folder
    (weights, code files, processor, card with the measured metrics in its model-index, settings, curves) uploaded
    through huggingface_hub's API; without a token, refused before any work."""
    from huggingface_hub import ModelCard

    from transformers_pem.cli.evaluate import main as evaluate_main
    from transformers_pem.deploy import hub

    monkeypatch.setattr(hub, "get_token", lambda: None)
    config = dict(output_dir=tmp_path / "run", data_root=cityscapes_root, preset="pem-stdc1-cityscapes-semantic",
                  config_overrides=TINY, scale=0.0625, batch_size=2, max_steps=2, eval_every=2, save_every=0,
                  push_to_hub="someone/pem-tiny")  # fmt: skip
    with pytest.raises(ValueError, match="needs a Hugging Face token"):
        train(TrainingConfig(**config))
    assert not (tmp_path / "run").exists()

    monkeypatch.setattr(hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    RecordingHfApi.calls = []
    state = train(TrainingConfig(**config))
    final = tmp_path / "run" / "final"
    assert RecordingHfApi.calls[0] == ("create_repo", "someone/pem-tiny", {"exist_ok": True})
    kind, repo, files = RecordingHfApi.calls[1]
    assert kind == "upload_folder" and repo == "someone/pem-tiny"
    expected = {"README.md", "curves.png", "config.json", "model.safetensors", "preprocessor_config.json",
                "training_config.json", "modeling_pem.py", "configuration_pem.py"}  # fmt: skip
    assert expected <= set(files)
    card = ModelCard.load(final / "README.md")
    results = {result.metric_type: result for result in card.data.eval_results}
    assert {name: r.metric_value for name, r in results.items()} == {k: round(v, 2) for k, v in state["eval"].items()}
    assert {(r.dataset_type, r.dataset_split, r.task_type) for r in results.values()} == {
        ("cityscapes", "val", "image-segmentation")
    }
    assert "![Training curves](curves.png)" in card.text and "| `max_steps` | `2` |" in card.text
    assert "model-index" in (final / "README.md").read_text()

    RecordingHfApi.calls = []
    results = evaluate_main([str(final), "--dataset=cityscapes", f"--data-root={cityscapes_root}", "--split=val",
                             "--task=semantic", "--no-progress", "--push-to-hub=someone/pem-tiny-eval"])  # fmt: skip
    card = ModelCard.load(final / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        name: round(results["metrics"][name], 2) for name in ("mIoU", "mAcc", "pAcc")
    }
    assert [call[:2] for call in RecordingHfApi.calls] == [
        ("create_repo", "someone/pem-tiny-eval"),
        ("upload_folder", "someone/pem-tiny-eval"),
    ]
