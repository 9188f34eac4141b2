"""Fine-tuning PEM with accelerate: the official optimiser and schedule, resumable atomic checkpoints, periodic
evaluation.

```python
>>> from transformers_pem import TrainingConfig, train
>>> train(TrainingConfig(preset="pem-stdc1-cityscapes-panoptic", task="panoptic", data_root="data/cityscapes",
...                      output_dir="runs/stdc1", max_steps=1000, batch_size=8))
```

The command line (`scripts/train.py`, `python -m transformers_pem.commands.train`) builds the same `TrainingConfig`;
it runs as `accelerate launch scripts/train.py ...`, `torchrun --nproc_per_node N scripts/train.py ...` or plain
`python scripts/train.py ...`.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from tqdm.auto import tqdm

from .augmentation_pem import (
    AugmentedSegmentationDataset,
    PEMSegmentationTransform,
    collate_fn,
    official_train_augmentation,
    sample_seed,
)
from .configuration_pem import PEMConfig
from .datasets_pem import load_ade20k, load_cityscapes, load_segmentation_dataset
from .hub_pem import check_hub_token, push_folder, trained_model_card
from .image_processing_pem import PEMImageProcessor
from .modeling_pem import PEMForUniversalSegmentation
from .presets_pem import Protocol, check_task, get_preset
from .utils_pem import check_output_dir, require
from .visualization_pem import CURVES_FILE, SCALARS_FILE, plot_training_curves

accelerate = require("accelerate", "train", "Training")
accelerate_utils = require("accelerate.utils", "train", "Training")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
# The unweighted loss terms of the final prediction, logged beside the weighted total.
LOSS_TERMS = ("loss_cross_entropy", "loss_mask", "loss_dice")

_SHARED_RECIPE = ("weight_decay", "backbone_lr_multiplier", "clip_grad_norm", "warmup_steps")
# Without an official preset (a model from `model_name_or_path` only): a short fine-tuning schedule.
_FINE_TUNING_STEPS = 1000
_FINE_TUNING_LEARNING_RATE = 1e-4


@dataclass
class TrainingConfig:
    """What `train` runs. Optimisation settings left at `None` take the official recipe of `preset` (AdamW, cosine
    schedule; the numbers are the preset's `Protocol` in `presets_pem`), see `recipe()`."""

    output_dir: str | os.PathLike
    data_root: str | os.PathLike  # dataset root folder, or a Hub id / parquet path with dataset="hub"
    # Model
    preset: str | None = "pem-r50-cityscapes-semantic"  # PEMConfig preset and official recipe
    model_name_or_path: str | None = None  # start from a saved PEM model (local dir or Hub id)
    config_overrides: dict | None = None  # PEMConfig fields, e.g. {"num_queries": 50}
    backbone_weights: str | None = None  # ImageNet backbone checkpoint (STDC .tar/.pkl, ResNet-50 .pth)
    id2label: dict[int, str] | None = None  # a custom label set (else the preset's dataset)
    thing_ids: list[int] | None = None  # thing classes of a custom label set
    freeze_backbone_batch_norm: bool | None = None  # None: the preset's (FrozenBN for ADE20K R50, as officially)
    # Data
    dataset: str = "cityscapes"  # "cityscapes", "ade20k" or "hub"
    task: str = "semantic"
    column_mapping: dict[str, str] | None = None  # renames dataset columns (dataset="hub")
    train_split: str = "train"
    eval_split: str | None = "val"
    augmentation: str | None = None  # official recipe "cityscapes" / "ade20k"; default: the dataset's
    scale: float = 1.0  # scale of the recipe's resize/crop sizes
    reduce_labels: bool | None = None  # semantic maps with 0 = "other" (ADE20K); default: the processor's setting
    test_size: tuple[int, int] | None = None  # evaluation resize (shortest edge, longest edge)
    num_workers: int = 0
    # Optimisation (None: the preset's official recipe)
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int = 2  # per process (the official recipe's `Protocol.batch_size` is the total over all processes)
    gradient_accumulation_steps: int = 1
    weight_decay: float | None = None
    backbone_lr_multiplier: float | None = None
    clip_grad_norm: float | None = None  # full-model gradient clipping (0: off)
    warmup_steps: int | None = None
    mixed_precision: str | None = None  # "no", "fp16" or "bf16"
    seed: int = 0
    # After the last step, recompute BatchNorm running statistics over this many batches of training images prepared
    # as for evaluation (`recompute_batch_norm`). 0 keeps the running averages of the last steps, as officially.
    precise_bn_batches: int = 0
    # Run
    save_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 5000
    resume: str | None = None  # "latest" or a checkpoint folder
    report_to: str | None = None  # accelerate tracker, e.g. "tensorboard"
    push_to_hub: str | None = None  # Hub repository to upload the final model to, with its card and curves

    def __post_init__(self):
        if self.preset is not None:
            get_preset(self.preset)  # a clear error for an unknown name
        elif self.model_name_or_path is None:
            raise ValueError("Set a preset (the model and its official recipe) or model_name_or_path.")
        check_task(self.task)
        if self.dataset not in ("cityscapes", "ade20k", "hub"):
            raise ValueError(f"Unknown dataset {self.dataset!r}: use 'cityscapes', 'ade20k' or 'hub'.")
        if self.batch_size < 2:
            raise ValueError(
                "batch_size 1 cannot train PEM: its pixel decoder applies BatchNorm to 1x1 pooled maps, which needs "
                "at least 2 images per process. Use a batch size of 2 or more (with gradient_accumulation_steps to "
                "keep memory low)."
            )
        if self.id2label is not None:
            self.id2label = {int(index): name for index, name in self.id2label.items()}

    def recipe(self) -> dict:
        """The optimisation settings: those set here, the others from the preset's official recipe (a short
        fine-tuning schedule without a preset)."""
        preset = get_preset(self.preset) if self.preset is not None else None
        shared = preset.protocol if preset is not None else Protocol  # the class holds the settings all configs share
        recipe = {name: getattr(shared, name) for name in _SHARED_RECIPE}
        # The cosine schedule ends at the official fraction of the learning rate, also when the rate is set here.
        if preset is not None:
            recipe.update(
                learning_rate=preset.protocol.learning_rate,
                end_learning_rate_ratio=preset.protocol.end_learning_rate / preset.protocol.learning_rate,
                max_steps=preset.training_steps,
            )
        else:
            recipe.update(
                learning_rate=_FINE_TUNING_LEARNING_RATE, end_learning_rate_ratio=0.0, max_steps=_FINE_TUNING_STEPS
            )
        recipe.update({name: getattr(self, name) for name in recipe if getattr(self, name, None) is not None})
        return recipe


def build_optimizer(
    model: PEMForUniversalSegmentation, learning_rate: float, weight_decay: float, backbone_lr_multiplier: float
) -> torch.optim.AdamW:
    """AdamW as the official `build_optimizer`: the backbone's learning rate is scaled by `backbone_lr_multiplier`;
    normalisation layers and embeddings get no weight decay."""
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)
    backbone = model.model.pixel_level_module.encoder
    backbone_parameters = {id(parameter) for parameter in backbone.parameters()}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            lr = learning_rate * (backbone_lr_multiplier if id(parameter) in backbone_parameters else 1.0)
            decay = 0.0 if isinstance(module, (*norm_types, nn.Embedding)) else weight_decay
            groups.setdefault((lr, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()],
        lr=learning_rate,
        fused=True,  # one kernel for all parameters; the per-tensor default costs seconds per step on CPU
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, max_steps: int, end_learning_rate_ratio: float = 0.0, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """detectron2's `WarmupCosineLR`: linear warm-up, then cosine decay from 1 to `end_learning_rate_ratio`."""

    def factor(step: int) -> float:
        cosine = end_learning_rate_ratio + (1 - end_learning_rate_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(step, max_steps) / max_steps)
        )
        return cosine * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints, newest first (incomplete ones are `*.tmp` and ignored)."""
    checkpoints = [
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / "trainer_state.json").exists()
    ]
    return [path for _, path in sorted(checkpoints, reverse=True)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the most steps."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[0] if checkpoints else None


def check_new_run_dir(output_dir: Path) -> None:
    """Refuse to start a run in a folder that holds another run's checkpoints or final model: mixed, a later
    `resume="latest"` would pick up the wrong run's weights."""
    previous = sorted(path.name for path in output_dir.iterdir() if CHECKPOINT_PATTERN.match(path.name))
    previous += ["final"] if (output_dir / "final").exists() else []
    if previous:
        raise ValueError(
            f"output_dir={str(output_dir)!r} already holds a run ({', '.join(previous[:3])}): pass resume='latest' "
            "(--resume latest) to continue it, or another output_dir for a new run."
        )


def load_newest_intact_checkpoint(accelerator: "accelerate.Accelerator", checkpoints: list[Path]) -> tuple[Path, dict]:
    """Load the first of `checkpoints` (newest first) that reads back whole; say which ones were skipped and why.
    Every state (weights, optimizer, scheduler, random generators) is overwritten by the one that loads."""
    for index, checkpoint in enumerate(checkpoints):
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            accelerator.load_state(str(checkpoint))
            return checkpoint, state
        except Exception as error:  # any unreadable file: fall back to the previous checkpoint
            fallback = (
                f"falling back to {checkpoints[index + 1].name}" if index + 1 < len(checkpoints) else "none left"
            )
            accelerator.print(f"Checkpoint {checkpoint} is unreadable ({type(error).__name__}: {error}); {fallback}.")
    raise ValueError(
        f"No intact checkpoint among {[path.name for path in checkpoints]}: start a new run in another output_dir."
    )


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors (e.g. a state dict), to compare replicas and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ScalarLog:
    """The run's scalars as JSON lines in `<output_dir>/scalars.jsonl` (one object per step or evaluation, with
    its `step`), written by the main process beside the configured tracker: readable without a tracker, and the
    source of `curves.png`. On resume, entries after the resumed step (and a line cut by a kill) are dropped, so the
    file equals an uninterrupted run's."""

    def __init__(self, output_dir: Path, resumed_step: int, enabled: bool):
        self.path = output_dir / SCALARS_FILE
        self.enabled = enabled
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_step and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("step", math.inf) <= resumed_step:
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def log(self, accelerator: "accelerate.Accelerator", values: dict[str, float], step: int) -> None:
        accelerator.log(values, step=step)
        if self.enabled:
            with open(self.path, "a") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")


def save_checkpoint(accelerator: "accelerate.Accelerator", output_dir: Path, step: int, epoch: int, keep: int) -> None:
    """Write `checkpoint-<step>` atomically (to a temporary folder, renamed when complete), keep the last `keep`."""
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": epoch}))
        if final.exists():  # an unreadable checkpoint that resuming fell back from: the new one replaces it
            shutil.rmtree(final)
        os.replace(temporary, final)
        checkpoints = sorted(
            (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
        )
        for _, old in checkpoints[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_training_data(config: TrainingConfig, split: str):
    """The `datasets.Dataset` of a split of the configured dataset."""
    if config.dataset == "cityscapes":
        return load_cityscapes(config.data_root, split=split, task=config.task)
    if config.dataset == "ade20k":
        return load_ade20k(config.data_root, split=split, task=config.task)
    return load_segmentation_dataset(
        config.data_root, split=split, task=config.task, column_mapping=config.column_mapping
    )


def build_model(config: TrainingConfig) -> PEMForUniversalSegmentation:
    """The model to train: a saved one (`model_name_or_path`, with a new head for a custom label set) or the preset
    with `config_overrides` (and ImageNet `backbone_weights`)."""
    labels = {"id2label": config.id2label, "thing_ids": config.thing_ids} if config.id2label is not None else {}
    if config.model_name_or_path:
        return PEMForUniversalSegmentation.from_pretrained(
            config.model_name_or_path, ignore_mismatched_sizes=bool(labels), **labels
        )
    model = PEMForUniversalSegmentation(
        PEMConfig.from_preset(config.preset, **{**(config.config_overrides or {}), **labels})
    )
    if config.backbone_weights:
        from .checkpoint_io_pem import load_backbone_weights

        load_backbone_weights(model, config.backbone_weights)
    return model


def train(config: TrainingConfig) -> dict:
    """Fine-tune PEM as `config` says; checkpoints go to `config.output_dir` (`checkpoint-<step>`, atomic) and the
    final model to `<output_dir>/final` (`save_pretrained`, with its processor). Returns the final state."""
    output_dir = check_output_dir(config.output_dir, "output_dir")
    require("matplotlib", "train", "Drawing the training curves")  # at the end: missing, it would fail only then
    if config.push_to_hub:
        check_hub_token()
    if config.resume == "latest":
        checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    elif config.resume:
        if not (Path(config.resume) / "trainer_state.json").is_file():
            raise ValueError(f"resume={config.resume!r}: no such checkpoint (a checkpoint-<step> folder).")
        checkpoints = [Path(config.resume)]
    else:
        checkpoints = []
        if output_dir.is_dir():
            check_new_run_dir(output_dir)
    recipe = config.recipe()
    accelerate_utils.set_seed(config.seed)

    train_data = load_training_data(config, config.train_split)
    eval_data = load_training_data(config, config.eval_split) if config.eval_split and config.eval_every else None
    model = build_model(config)
    freeze_backbone = config.freeze_backbone_batch_norm
    if freeze_backbone is None:
        freeze_backbone = config.preset is not None and get_preset(config.preset).frozen_backbone_batch_norm
    if freeze_backbone:
        freeze_batch_norm(model.model.pixel_level_module.encoder)
    accelerator = accelerate.Accelerator(
        # Without a GPU, `cpu=True` lets torchrun / accelerate launch run several CPU processes (MULTI_CPU, gloo).
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.report_to,
        project_config=accelerate_utils.ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=accelerate_utils.DataLoaderConfiguration(use_seedable_sampler=True),
        # With fewer decoder layers than feature levels, the projections of the unused levels get no gradient.
        kwargs_handlers=[
            accelerate_utils.DistributedDataParallelKwargs(
                find_unused_parameters=model.config.decoder_layers < model.config.num_feature_levels
            )
        ],
    )
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    processor = (
        PEMImageProcessor.from_pretrained(config.model_name_or_path)
        if config.model_name_or_path
        else PEMImageProcessor.from_preset(config.preset, model_config=model.config)
    )
    if config.test_size:
        processor.size = {"shortest_edge": config.test_size[0], "longest_edge": config.test_size[1]}
    if config.reduce_labels is not None:
        processor.do_reduce_labels = config.reduce_labels
    recipe_name = config.augmentation or ("cityscapes" if config.dataset == "cityscapes" else "ade20k")
    transform = PEMSegmentationTransform(
        processor,
        task=config.task,
        augmentation=official_train_augmentation(recipe_name, config.task, scale=config.scale),
        reduce_labels=config.reduce_labels,
        num_labels=model.config.num_labels,
    )
    train_set = AugmentedSegmentationDataset(train_data, transform, seed=config.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"The training split has {len(train_set)} examples, fewer than one batch of {config.batch_size} "
            f"(x {accelerator.num_processes} processes)."
        )

    max_steps = recipe["max_steps"]
    optimizer = build_optimizer(
        model, recipe["learning_rate"], recipe["weight_decay"], recipe["backbone_lr_multiplier"]
    )
    scheduler = build_scheduler(optimizer, max_steps, recipe["end_learning_rate_ratio"], recipe["warmup_steps"])
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, epoch, skip = 0, 0, 0
    if checkpoints:
        checkpoint, state = load_newest_intact_checkpoint(accelerator, checkpoints)
        step = state["step"]
        epoch, skip = divmod(step * config.gradient_accumulation_steps, len(loader))
        accelerator.print(f"Resumed from {checkpoint} at step {step} (epoch {epoch}).")

    settings = {**dataclasses.asdict(config), **recipe}
    accelerator.init_trackers("pem", config={k: v for k, v in settings.items() if isinstance(v, int | float | str)})
    scalars = ScalarLog(output_dir, step, enabled=accelerator.is_main_process)
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    history, started = [], time.perf_counter()
    metrics, evaluated_step = None, None
    model.train()
    while step < max_steps:
        loader.set_epoch(epoch)
        train_set.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            # The loss samples random points: seed every step from (seed, step, process) so that a resumed run draws
            # exactly what an uninterrupted one draws, whatever the data loaders consumed from the global generator.
            torch.manual_seed(sample_seed(config.seed, step, accelerator.process_index))
            with accelerator.accumulate(model):
                outputs = model(
                    pixel_values=batch["pixel_values"],
                    mask_labels=batch["mask_labels"],
                    class_labels=batch["class_labels"],
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and recipe["clip_grad_norm"] > 0:
                    accelerator.clip_grad_norm_(model.parameters(), recipe["clip_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            # The weighted total and the final prediction's unweighted terms, averaged over processes.
            terms = [outputs.loss.detach()] + [outputs.loss_dict[name].detach() for name in LOSS_TERMS]
            loss, *term_values = accelerator.reduce(torch.stack(terms), reduction="mean").tolist()
            history.append(loss)
            progress.update(1)
            learning_rate = max(scheduler.get_last_lr())  # the head's; the backbone's is scaled down
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.2e}")
            values = {"train/loss": loss, **{f"train/{name}": v for name, v in zip(LOSS_TERMS, term_values)}}
            scalars.log(accelerator, {**values, "train/lr": learning_rate}, step)
            if config.save_every and step % config.save_every == 0 and step < max_steps:
                save_checkpoint(accelerator, output_dir, step, epoch, config.keep_checkpoints)
            if eval_data is not None and step % config.eval_every == 0:
                metrics = evaluate_during_training(accelerator, model, processor, eval_data, config.task)
                evaluated_step = step
                scalars.log(accelerator, {f"eval/{k}": v for k, v in metrics.items()}, step)
                accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                model.train()
            if step >= max_steps:
                break
        epoch += 1
    progress.close()

    final = {"step": step, "seconds": time.perf_counter() - started, "last_losses": history[-10:]}
    unwrapped = accelerator.unwrap_model(model)
    if config.precise_bn_batches:
        recompute_batch_norm(unwrapped, processor, train_data, config.batch_size, config.precise_bn_batches)
    if accelerator.num_processes > 1:
        # Parameters must agree across processes. BatchNorm running statistics are per process on CPU (no SyncBN);
        # DDP broadcasts them from process 0 at every forward, and process 0's are the ones saved.
        digest = tensors_digest(dict(unwrapped.named_parameters()))
        digests = accelerator.gather_for_metrics([digest], use_gather_object=True)
        final["replicas_identical"] = len(set(digests)) == 1
    if eval_data is not None:
        # The final weights were just evaluated if the last step was an evaluation step (and BatchNorm was kept).
        if evaluated_step != step or config.precise_bn_batches:
            metrics = evaluate_during_training(accelerator, model, processor, eval_data, config.task)
            scalars.log(accelerator, {f"eval/{k}": v for k, v in metrics.items()}, step)
        final["eval"] = metrics
    final["weights_sha256"] = tensors_digest(unwrapped.state_dict())
    if accelerator.is_main_process:
        unwrapped = _plain_batch_norm(unwrapped)
        final_dir = output_dir / "final"
        unwrapped.save_pretrained(final_dir, safe_serialization=True)
        processor.save_pretrained(final_dir)
        (final_dir / "training_state.json").write_text(json.dumps(final, indent=1))
        plot_training_curves(scalars.path, output_dir / CURVES_FILE)
        # The final folder is what gets published: the model, its card (measured metrics, settings) and curves.
        shutil.copy(output_dir / CURVES_FILE, final_dir / CURVES_FILE)
        training = {k: v for k, v in settings.items() if k not in ("output_dir", "data_root", "push_to_hub")}
        (final_dir / "training_config.json").write_text(json.dumps(training, indent=1, default=str))
        card = trained_model_card(
            unwrapped.config,
            config.push_to_hub or str(final_dir),
            config.task,
            metrics=final.get("eval"),
            split=config.eval_split if final.get("eval") else None,
            training=training,
            curves=CURVES_FILE,
        )
        card.save(final_dir / "README.md")
        if config.push_to_hub:
            push_folder(final_dir, config.push_to_hub, commit_message=f"PEM trained for {step} steps")
    accelerator.end_training()
    return final


def recompute_batch_norm(model: nn.Module, processor, dataset, batch_size: int, num_batches: int) -> None:
    """
    Recompute the BatchNorm running statistics of `model` as a plain average over the first `num_batches` batches of
    `dataset`'s images, prepared as for evaluation (the processor's resize, no augmentation). The running averages
    of the last training steps are noisy at small batches, and the statistics of augmented crops differ from those of
    evaluation inputs (detectron2's PreciseBN averages training batches instead).
    """
    device = next(model.parameters()).device
    count = min(len(dataset), num_batches * batch_size)
    batches = (
        processor(
            [example["image"] for example in dataset.select(range(start, min(start + batch_size, count)))],
            return_tensors="pt",
        )["pixel_values"]
        for start in range(0, count, batch_size)
    )
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model, device=device)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` with torchvision's FrozenBatchNorm2d (fixed statistics and affine
    parameters), as the official ADE20K PEM-R50 configs train their backbone (detectron2 FrozenBN)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(
                {key: value for key, value in child.state_dict().items() if key != "num_batches_tracked"}
            )
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def _plain_batch_norm(model: nn.Module) -> nn.Module:
    """SyncBatchNorm (multi-GPU training) and FrozenBatchNorm2d back to BatchNorm2d, so the saved model has PEM's
    architecture and runs anywhere."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm | FrozenBatchNorm2d):
            replacement = nn.BatchNorm2d(child.weight.numel(), child.eps)
            state = child.state_dict()
            state.setdefault("num_batches_tracked", torch.tensor(0))
            replacement.load_state_dict(state)
            setattr(model, name, replacement.train(child.training))
        else:
            _plain_batch_norm(child)
    return model


def evaluate_during_training(
    accelerator: "accelerate.Accelerator", model: nn.Module, processor: PEMImageProcessor, dataset, task: str
) -> dict[str, float]:
    """The task's headline metrics on `dataset`, each process evaluating its share (the same result on every
    process, equal to one process's)."""
    from .evaluation_pem import HEADLINE_METRICS, evaluate_model

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:
        # BatchNorm running statistics are per process on CPU: evaluate process 0's everywhere, the ones saved.
        for buffer in unwrapped.buffers():
            torch.distributed.broadcast(buffer, src=0)
    results = evaluate_model(unwrapped, processor, dataset, task=task, progress=False)
    return {k: float(results[k]) for k in HEADLINE_METRICS[task] if k in results}


__all__ = ["TrainingConfig", "build_optimizer", "build_scheduler", "train"]
