"""Fine-tuning PEM with accelerate: the official optimiser and schedule, resumable atomic checkpoints, periodic
evaluation. `scripts/train.py` is the command line; `python -m transformers_pem.training_pem` is the same.

Runs as `accelerate launch scripts/train.py ...`, `torchrun --nproc_per_node N scripts/train.py ...` or plain
`python scripts/train.py ...`.
"""

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from tqdm.auto import tqdm

from .allocator_pem import add_allocator_argument, apply_allocator_argument
from .configuration_pem import PEMConfig
from .data_pem import (
    AugmentedSegmentationDataset,
    PEMSegmentationTransform,
    collate_fn,
    load_ade20k,
    load_cityscapes,
    load_segmentation_dataset,
    official_train_augmentation,
    sample_seed,
)
from .image_processing_pem import PEMImageProcessor
from .modeling_pem import PEMForUniversalSegmentation

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingRecipe:
    """Optimisation settings of the official configs (`SOLVER` in configs/<dataset>/*.yaml)."""

    learning_rate: float
    max_steps: int
    end_learning_rate: float = 0.0
    batch_size: int = 32
    weight_decay: float = 0.05
    backbone_lr_multiplier: float = 0.1
    clip_grad_norm: float = 0.01
    warmup_steps: int = 0


def official_recipe(preset: str) -> TrainingRecipe:
    """The official recipe of a preset: AdamW, cosine schedule, batch 32; Cityscapes lr 7e-4 for 90k steps, ADE20K
    lr 4e-4 decaying to 1e-6 for 160k steps (R50) or 90k steps (STDC, as the config file names say)."""
    if preset not in PEMConfig.presets():
        raise ValueError(f"Unknown PEM preset {preset!r}. Available presets: {', '.join(PEMConfig.presets())}.")
    _, backbone, dataset, _ = preset.split("-")
    if dataset == "cityscapes":
        return TrainingRecipe(learning_rate=7e-4, max_steps=90_000)
    return TrainingRecipe(
        learning_rate=4e-4, max_steps=160_000 if backbone == "r50" else 90_000, end_learning_rate=1e-6
    )


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


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the most steps (incomplete ones are `*.tmp` and ignored)."""
    checkpoints = [
        (int(match.group(1)), path)
        for path in output_dir.glob("checkpoint-*")
        if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / "trainer_state.json").exists()
    ]
    return max(checkpoints)[1] if checkpoints else None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors (e.g. a state dict), to compare replicas and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_training_data(args: argparse.Namespace, split: str) -> datasets.Dataset:
    if args.dataset == "cityscapes":
        return load_cityscapes(args.data_root, split=split, task=args.task)
    if args.dataset == "ade20k":
        return load_ade20k(args.data_root, split=split, task=args.task)
    column_mapping = json.loads(args.column_mapping) if args.column_mapping else None
    return load_segmentation_dataset(args.data_root, split=split, task=args.task, column_mapping=column_mapping)


def build_model(args: argparse.Namespace, id2label: dict[int, str] | None) -> PEMForUniversalSegmentation:
    if args.model_name_or_path:
        overrides = {"id2label": id2label, "thing_ids": args.thing_ids} if id2label is not None else {}
        return PEMForUniversalSegmentation.from_pretrained(
            args.model_name_or_path, ignore_mismatched_sizes=bool(overrides), **overrides
        )
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if id2label is not None:
        overrides.update(id2label=id2label, thing_ids=args.thing_ids)
    model = PEMForUniversalSegmentation(PEMConfig.from_preset(args.preset, **overrides))
    if args.backbone_weights:
        from .convert import load_backbone_weights

        load_backbone_weights(model, args.backbone_weights)
    return model


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, epoch: int, keep: int) -> None:
    """Write `checkpoint-<step>` atomically (to a temporary folder, renamed when complete), keep the last `keep`."""
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": epoch}))
        os.replace(temporary, final)
        checkpoints = sorted(
            (int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT_PATTERN.match(p.name))
        )
        for _, old in checkpoints[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def train(args: argparse.Namespace) -> dict:
    """Run training as configured by the command-line arguments (see `parse_args`). Returns the final state."""
    output_dir = Path(args.output_dir)
    if args.batch_size < 2:
        raise ValueError(
            "--batch-size 1 cannot train PEM: its pixel decoder applies BatchNorm to 1x1 pooled maps, which needs at "
            "least 2 images per process. Use --batch-size 2 or more (with --gradient-accumulation-steps to keep "
            "memory low)."
        )
    set_seed(args.seed)

    train_data = load_training_data(args, args.train_split)
    eval_data = load_training_data(args, args.eval_split) if args.eval_split and args.eval_every else None
    id2label = json.loads(args.id2label) if args.id2label else None
    id2label = {int(k): v for k, v in id2label.items()} if id2label else None
    model = build_model(args, id2label)
    freeze_backbone = args.freeze_backbone_batch_norm
    if freeze_backbone is None:
        freeze_backbone = bool(args.preset) and args.preset.startswith("pem-r50-ade20k")
    if freeze_backbone:
        freeze_batch_norm(model.model.pixel_level_module.encoder)
    accelerator = Accelerator(
        # Without a GPU, `cpu=True` lets torchrun / accelerate launch run several CPU processes (MULTI_CPU, gloo).
        cpu=not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # With fewer decoder layers than feature levels, the projections of the unused levels get no gradient.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=model.config.decoder_layers < model.config.num_feature_levels
            )
        ],
    )
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    processor = (
        PEMImageProcessor.from_pretrained(args.model_name_or_path)
        if args.model_name_or_path
        else PEMImageProcessor.from_preset(args.preset, thing_ids=model.config.thing_ids)
    )
    if args.test_size:
        processor.size = {"shortest_edge": args.test_size[0], "longest_edge": args.test_size[1]}
    if args.reduce_labels is not None:
        processor.do_reduce_labels = args.reduce_labels
    recipe_name = args.augmentation or ("cityscapes" if args.dataset == "cityscapes" else "ade20k")
    transform = PEMSegmentationTransform(
        processor,
        task=args.task,
        augmentation=official_train_augmentation(recipe_name, args.task, scale=args.scale),
        reduce_labels=args.reduce_labels,
        num_labels=model.config.num_labels,
    )
    train_set = AugmentedSegmentationDataset(train_data, transform, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=args.num_workers,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"The training split has {len(train_set)} examples, fewer than one batch of {args.batch_size} "
            f"(x {accelerator.num_processes} processes)."
        )

    recipe = official_recipe(args.preset) if args.preset else TrainingRecipe(learning_rate=1e-4, max_steps=1000)
    learning_rate = args.learning_rate or recipe.learning_rate
    max_steps = args.max_steps or recipe.max_steps
    optimizer = build_optimizer(model, learning_rate, args.weight_decay, args.backbone_lr_multiplier)
    scheduler = build_scheduler(
        optimizer, max_steps, recipe.end_learning_rate / recipe.learning_rate, args.warmup_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, epoch, skip = 0, 0, 0
    checkpoint = None
    if args.resume:
        checkpoint = latest_checkpoint(output_dir) if args.resume == "latest" else Path(args.resume)
        if checkpoint is None and args.resume != "latest":
            raise ValueError(f"--resume {args.resume}: no such checkpoint.")
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step = state["step"]
        epoch, skip = divmod(step * args.gradient_accumulation_steps, len(loader))
        accelerator.print(f"Resumed from {checkpoint} at step {step} (epoch {epoch}).")

    accelerator.init_trackers("pem", config={k: v for k, v in vars(args).items() if isinstance(v, int | float | str)})
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
            torch.manual_seed(sample_seed(args.seed, step, accelerator.process_index))
            with accelerator.accumulate(model):
                outputs = model(
                    pixel_values=batch["pixel_values"],
                    mask_labels=batch["mask_labels"],
                    class_labels=batch["class_labels"],
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.clip_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss = accelerator.reduce(outputs.loss.detach(), reduction="mean").item()
            history.append(loss)
            progress.update(1)
            learning_rate = max(scheduler.get_last_lr())  # the head's; the backbone's is scaled down
            progress.set_postfix(loss=f"{loss:.3f}", lr=f"{learning_rate:.2e}")
            accelerator.log({"train/loss": loss, "train/lr": learning_rate}, step=step)
            if args.save_every and step % args.save_every == 0 and step < max_steps:
                save_checkpoint(accelerator, output_dir, step, epoch, args.keep_checkpoints)
            if eval_data is not None and step % args.eval_every == 0:
                metrics = evaluate_during_training(accelerator, model, processor, eval_data, args.task)
                evaluated_step = step
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
                accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                model.train()
            if step >= max_steps:
                break
        epoch += 1
    progress.close()

    final = {"step": step, "seconds": time.perf_counter() - started, "last_losses": history[-10:]}
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:
        # Parameters must agree across processes. BatchNorm running statistics are per process on CPU (no SyncBN);
        # DDP broadcasts them from process 0 at every forward, and process 0's are the ones saved.
        digest = tensors_digest(dict(unwrapped.named_parameters()))
        digests = accelerator.gather_for_metrics([digest], use_gather_object=True)
        final["replicas_identical"] = len(set(digests)) == 1
    if eval_data is not None:
        # The final weights were just evaluated if the last step was an evaluation step.
        if evaluated_step != step:
            metrics = evaluate_during_training(accelerator, model, processor, eval_data, args.task)
        final["eval"] = metrics
    final["weights_sha256"] = tensors_digest(unwrapped.state_dict())
    if accelerator.is_main_process:
        unwrapped = _plain_batch_norm(unwrapped)
        unwrapped.save_pretrained(output_dir / "final", safe_serialization=True)
        processor.save_pretrained(output_dir / "final")
        (output_dir / "final" / "training_state.json").write_text(json.dumps(final, indent=1))
    accelerator.end_training()
    return final


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
    accelerator: Accelerator, model: nn.Module, processor: PEMImageProcessor, dataset: datasets.Dataset, task: str
) -> dict[str, float]:
    """mIoU (and PQ for panoptic tasks) on `dataset`, computed on the main process."""
    from .evaluation_pem import HEADLINE_METRICS, evaluate_model

    metrics = {}
    if accelerator.is_main_process:
        results = evaluate_model(accelerator.unwrap_model(model), processor, dataset, task=task, progress=False)
        metrics = {k: float(results[k]) for k in HEADLINE_METRICS[task] if k in results}
    accelerator.wait_for_everyone()
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune PEM with accelerate (official recipe by default).")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="pem-r50-cityscapes-semantic", help="PEMConfig preset (official recipe)")
    model.add_argument("--model-name-or-path", help="start from a saved PEM model (local dir or Hub id)")
    model.add_argument("--config-overrides", help="JSON of PEMConfig fields, e.g. '{\"num_queries\": 50}'")
    model.add_argument("--backbone-weights", help="ImageNet backbone checkpoint (STDC .tar/.pkl, ResNet-50 .pth)")
    model.add_argument("--id2label", help="JSON {id: name} for a custom label set (else the preset's dataset)")
    model.add_argument("--thing-ids", type=int, nargs="*", help="thing classes of a custom label set")
    model.add_argument(
        "--freeze-backbone-batch-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fixed backbone BatchNorm (FrozenBN); default: on for the ADE20K R50 presets, as officially",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=["cityscapes", "ade20k", "hub"], default="cityscapes")
    data.add_argument(
        "--data-root", required=True, help="dataset root folder, or a Hub id / parquet path (--dataset hub)"
    )
    data.add_argument("--task", choices=["semantic", "instance", "panoptic"], default="semantic")
    data.add_argument(
        "--column-mapping", help='JSON renaming dataset columns (--dataset hub), e.g. \'{"annotation": "semantic"}\''
    )
    data.add_argument("--train-split", default="train")
    data.add_argument("--eval-split", default="val")
    data.add_argument(
        "--augmentation",
        choices=["cityscapes", "ade20k"],
        help="official augmentation recipe (default: the dataset's; ADE20K's square crops for other datasets)",
    )
    data.add_argument("--scale", type=float, default=1.0, help="scale of the recipe's resize/crop sizes")
    data.add_argument(
        "--reduce-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="semantic maps with 0 = 'other' (ADE20K): 0 -> ignore, c -> c - 1 (default: the processor's setting)",
    )
    data.add_argument("--test-size", type=int, nargs=2, metavar=("SHORT", "MAX"), help="evaluation resize")
    data.add_argument("--num-workers", type=int, default=0)
    optim = parser.add_argument_group("optimisation (defaults: the preset's official recipe)")
    optim.add_argument("--max-steps", type=int)
    optim.add_argument("--learning-rate", type=float)
    optim.add_argument("--batch-size", type=int, default=2, help="per process (official: 32 in total)")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--weight-decay", type=float, default=0.05)
    optim.add_argument("--backbone-lr-multiplier", type=float, default=0.1)
    optim.add_argument("--clip-grad-norm", type=float, default=0.01, help="full-model gradient clipping (0: off)")
    optim.add_argument("--warmup-steps", type=int, default=0)
    optim.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    optim.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--save-every", type=int, default=1000)
    run.add_argument("--keep-checkpoints", type=int, default=2)
    run.add_argument("--eval-every", type=int, default=5000)
    run.add_argument("--resume", nargs="?", const="latest", help="resume from the latest checkpoint or a given one")
    run.add_argument("--report-to", default=None, help="accelerate tracker, e.g. tensorboard")
    add_allocator_argument(run)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_allocator_argument(args)
    if args.preset and args.preset not in PEMConfig.presets():
        raise SystemExit(f"Unknown preset {args.preset!r}; choose one of: {', '.join(PEMConfig.presets())}.")
    final = train(args)
    print(json.dumps({k: v for k, v in final.items() if k != "last_losses"}, indent=1))


if __name__ == "__main__":
    main()

__all__ = ["TrainingRecipe", "build_optimizer", "build_scheduler", "official_recipe", "train"]
