"""Fine-tuning PEM with accelerate: the official optimiser and schedule, resumable atomic checkpoints, periodic
evaluation. [`train`] runs in three parts: [`prepare`] (checks, data, model, optimiser, resumed state), [`run`] (the
steps, checkpoints and evaluations) and [`finish`] (BatchNorm statistics, the final model, its card and curves).

```python
>>> from transformers_pem import TrainingConfig, train
>>> train(TrainingConfig(preset="pem-stdc1-cityscapes-panoptic", task="panoptic", data_root="data/cityscapes",
...                      output_dir="runs/stdc1", max_steps=1000, batch_size=8))
```

The command line (`pem train`, `scripts/train.py`) builds the same `TrainingConfig`; it runs as `accelerate launch
scripts/train.py ...`, `torchrun --nproc_per_node N scripts/train.py ...` or plain `python scripts/train.py ...`.
"""

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..configuration_pem import PEMConfig
from ..conversion.checkpoint_io import load_backbone_weights
from ..data.augmentation import (
    AugmentedSegmentationDataset,
    PEMSegmentationTransform,
    collate_fn,
    official_train_augmentation,
    sample_seed,
)
from ..data.loaders import load_ade20k, load_cityscapes, load_segmentation_dataset
from ..deploy.hub import check_hub_token, push_folder, trained_model_card
from ..image_processing_pem import PEMImageProcessor
from ..modeling_pem import PEMForUniversalSegmentation
from ..presets_pem import get_preset
from ..utils.extras import require
from ..utils.paths import check_output_dir
from .batch_norm import freeze_batch_norm, plain_batch_norm, recompute_batch_norm
from .checkpoints import (
    check_new_run_dir,
    complete_checkpoints,
    load_newest_intact_checkpoint,
    save_checkpoint,
    tensors_digest,
)
from .config import TrainingConfig
from .optimization import build_optimizer, build_scheduler
from .scalars import CURVES_FILE, ScalarLog, plot_training_curves

accelerate = require("accelerate", "train", "Training")
accelerate_utils = require("accelerate.utils", "train", "Training")

# The unweighted loss terms of the final prediction, logged beside the weighted total.
LOSS_TERMS = ("loss_cross_entropy", "loss_mask", "loss_dice")


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
        load_backbone_weights(model, config.backbone_weights)
    return model


@dataclass
class TrainingRun:
    """What [`prepare`] builds for [`run`] and [`finish`]: the prepared (wrapped) objects, and where a resumed run
    starts."""

    config: TrainingConfig
    recipe: dict
    output_dir: Path
    accelerator: "accelerate.Accelerator"
    model: nn.Module
    processor: PEMImageProcessor
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    train_set: AugmentedSegmentationDataset
    train_data: "datasets.Dataset"  # noqa: F821 (the train extra's datasets)
    eval_data: "datasets.Dataset | None"  # noqa: F821
    step: int = 0
    epoch: int = 0
    skip: int = 0  # batches of `epoch` already trained on (a resumed run)


@dataclass
class TrainingProgress:
    """What [`run`] leaves for [`finish`]."""

    seconds: float
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    evaluated_step: int | None = None


def prepare(config: TrainingConfig) -> TrainingRun:
    """Check the output folder, extras, Hub token and checkpoint to resume before any work; then load the data,
    build the model, processor, augmentation, optimiser and schedule, prepare them with accelerate and load the
    newest intact checkpoint to resume from."""
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
    if config.activation_checkpointing:
        model.activation_checkpointing_enable()
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

    optimizer = build_optimizer(
        model, recipe["learning_rate"], recipe["weight_decay"], recipe["backbone_lr_multiplier"]
    )
    scheduler = build_scheduler(
        optimizer, recipe["max_steps"], recipe["end_learning_rate_ratio"], recipe["warmup_steps"]
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    training = TrainingRun(
        config=config,
        recipe=recipe,
        output_dir=output_dir,
        accelerator=accelerator,
        model=model,
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        train_set=train_set,
        train_data=train_data,
        eval_data=eval_data,
    )
    if checkpoints:
        checkpoint, state = load_newest_intact_checkpoint(accelerator, checkpoints)
        training.step = state["step"]
        training.epoch, training.skip = divmod(training.step * config.gradient_accumulation_steps, len(loader))
        accelerator.print(f"Resumed from {checkpoint} at step {training.step} (epoch {training.epoch}).")
    return training


def run(training: TrainingRun, scalars: ScalarLog) -> TrainingProgress:
    """The training steps from `training.step` to the recipe's `max_steps`, with the configured checkpoints and
    evaluations; every step's losses and learning rate, and every evaluation, go to `scalars`."""
    config, recipe, accelerator, model = training.config, training.recipe, training.accelerator, training.model
    optimizer, scheduler, loader = training.optimizer, training.scheduler, training.loader
    max_steps = recipe["max_steps"]
    step, epoch, skip = training.step, training.epoch, training.skip
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    result, started = TrainingProgress(seconds=0.0), time.perf_counter()
    model.train()
    while step < max_steps:
        loader.set_epoch(epoch)
        training.train_set.set_epoch(epoch)
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
            result.losses.append(loss)
            progress.update(1)
            learning_rate = max(scheduler.get_last_lr())  # the head's; the backbone's is scaled down
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.2e}")
            values = {"train/loss": loss, **{f"train/{name}": v for name, v in zip(LOSS_TERMS, term_values)}}
            scalars.log(accelerator, {**values, "train/lr": learning_rate}, step)
            if config.save_every and step % config.save_every == 0 and step < max_steps:
                save_checkpoint(accelerator, training.output_dir, step, epoch, config.keep_checkpoints)
            if training.eval_data is not None and step % config.eval_every == 0:
                result.metrics = evaluate_during_training(
                    accelerator, model, training.processor, training.eval_data, config.task
                )
                result.evaluated_step = step
                scalars.log(accelerator, {f"eval/{k}": v for k, v in result.metrics.items()}, step)
                accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
                model.train()
            if step >= max_steps:
                break
        epoch += 1
    progress.close()
    training.step, training.epoch = step, epoch
    result.seconds = time.perf_counter() - started
    return result


def finish(training: TrainingRun, progress: TrainingProgress, scalars: ScalarLog) -> dict:
    """After the last step: recompute BatchNorm statistics if asked, evaluate the final weights (unless the last step
    just did), and save the final model with its processor, state, settings, curves and card to
    `<output_dir>/final` (uploaded with `push_to_hub`). Returns the final state."""
    config, accelerator, processor = training.config, training.accelerator, training.processor
    output_dir, step = training.output_dir, training.step
    final = {"step": step, "seconds": progress.seconds, "last_losses": progress.losses[-10:]}
    unwrapped = accelerator.unwrap_model(training.model)
    if config.precise_bn_batches:
        recompute_batch_norm(unwrapped, processor, training.train_data, config.batch_size, config.precise_bn_batches)
    if accelerator.num_processes > 1:
        # Parameters must agree across processes. BatchNorm running statistics are per process on CPU (no SyncBN);
        # DDP broadcasts them from process 0 at every forward, and process 0's are the ones saved.
        digest = tensors_digest(dict(unwrapped.named_parameters()))
        digests = accelerator.gather_for_metrics([digest], use_gather_object=True)
        final["replicas_identical"] = len(set(digests)) == 1
    if training.eval_data is not None:
        metrics = progress.metrics
        # The final weights were just evaluated if the last step was an evaluation step (and BatchNorm was kept).
        if progress.evaluated_step != step or config.precise_bn_batches:
            metrics = evaluate_during_training(accelerator, training.model, processor, training.eval_data, config.task)
            scalars.log(accelerator, {f"eval/{k}": v for k, v in metrics.items()}, step)
        final["eval"] = metrics
    final["weights_sha256"] = tensors_digest(unwrapped.state_dict())
    if accelerator.is_main_process:
        unwrapped = plain_batch_norm(unwrapped)
        final_dir = output_dir / "final"
        unwrapped.save_pretrained(final_dir, safe_serialization=True)
        processor.save_pretrained(final_dir)
        (final_dir / "training_state.json").write_text(json.dumps(final, indent=1))
        plot_training_curves(scalars.path, output_dir / CURVES_FILE)
        # The final folder is what gets published: the model, its card (measured metrics, settings) and curves.
        shutil.copy(output_dir / CURVES_FILE, final_dir / CURVES_FILE)
        settings = {**dataclasses.asdict(config), **training.recipe}
        settings = {k: v for k, v in settings.items() if k not in ("output_dir", "data_root", "push_to_hub")}
        (final_dir / "training_config.json").write_text(json.dumps(settings, indent=1, default=str))
        card = trained_model_card(
            unwrapped.config,
            config.push_to_hub or str(final_dir),
            config.task,
            metrics=final.get("eval"),
            split=config.eval_split if final.get("eval") else None,
            training=settings,
            curves=CURVES_FILE,
        )
        card.save(final_dir / "README.md")
        if config.push_to_hub:
            push_folder(final_dir, config.push_to_hub, commit_message=f"PEM trained for {step} steps")
    accelerator.end_training()
    return final


def train(config: TrainingConfig) -> dict:
    """Fine-tune PEM as `config` says; checkpoints go to `config.output_dir` (`checkpoint-<step>`, atomic) and the
    final model to `<output_dir>/final` (`save_pretrained`, with its processor). Returns the final state."""
    training = prepare(config)
    settings = {**dataclasses.asdict(config), **training.recipe}
    training.accelerator.init_trackers(
        "pem", config={k: v for k, v in settings.items() if isinstance(v, int | float | str)}
    )
    scalars = ScalarLog(training.output_dir, training.step, enabled=training.accelerator.is_main_process)
    progress = run(training, scalars)
    return finish(training, progress, scalars)


def evaluate_during_training(
    accelerator: "accelerate.Accelerator", model: nn.Module, processor: PEMImageProcessor, dataset, task: str
) -> dict[str, float]:
    """The task's headline metrics on `dataset`, each process evaluating its share (the same result on every
    process, equal to one process's)."""
    from ..evaluation.evaluate import HEADLINE_METRICS, evaluate_model  # the eval extra, when evaluating

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:
        # BatchNorm running statistics are per process on CPU: evaluate process 0's everywhere, the ones saved.
        for buffer in unwrapped.buffers():
            torch.distributed.broadcast(buffer, src=0)
    results = evaluate_model(unwrapped, processor, dataset, task=task, progress=False)
    return {k: float(results[k]) for k in HEADLINE_METRICS[task] if k in results}
