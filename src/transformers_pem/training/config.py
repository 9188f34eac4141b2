"""What a training run does: `TrainingConfig`, and the official recipe its unset optimisation settings take."""

import math
import os
import warnings
from dataclasses import dataclass

from ..presets_pem import Protocol, check_task, get_preset
from ..utils.paths import check_local_or_hub

_SHARED_RECIPE = ("weight_decay", "backbone_lr_multiplier", "clip_grad_norm", "warmup_steps")
# The numeric settings and their smallest value (None values take the recipe's): a negative warmup trains with a
# negative learning rate, keep_checkpoints=-1 deletes each checkpoint as it is written, max_steps=0 divides by zero.
_MINIMUMS = {
    "num_workers": 0,
    "max_steps": 1,
    "batch_size": 1,  # (2 for training, checked below with the reason)
    "gradient_accumulation_steps": 1,
    "warmup_steps": 0,
    "precise_bn_batches": 0,
    "save_every": 0,  # 0: no intermediate checkpoints
    "keep_checkpoints": 1,
    "eval_every": 0,  # 0: no evaluation during training
    "learning_rate": 0.0,  # exclusive
    "weight_decay": 0.0,
    "backbone_lr_multiplier": 0.0,
    "clip_grad_norm": 0.0,  # 0: off
    "scale": 0.0,  # exclusive
}
_EXCLUSIVE = ("learning_rate", "scale")
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
    # Recompute the activations of the backbone, pixel-decoder and decoder blocks in the backward pass (less memory,
    # slower steps, the same weights: `PreTrainedModel.activation_checkpointing_enable`).
    activation_checkpointing: bool = False
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
        if self.model_name_or_path is not None:
            check_local_or_hub(
                self.model_name_or_path, "model_name_or_path", "a folder written by save_pretrained or a Hub id"
            )
        self._check_numbers()
        self._check_labels()
        if self.config_overrides is not None:
            if not isinstance(self.config_overrides, dict):
                raise ValueError(
                    f"config_overrides must be a dict of PEMConfig fields, got {self.config_overrides!r}."
                )
            if self.model_name_or_path is not None:
                raise ValueError(
                    "config_overrides builds a new model from the preset; a saved model (model_name_or_path) keeps "
                    "its own config: drop one of them."
                )
            from ..configuration_pem import PEMConfig

            PEMConfig.from_preset(self.preset, **self.config_overrides)  # unknown fields and bad values, now
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}.")
        if self.test_size is not None and (len(self.test_size) != 2 or min(self.test_size) < 1):
            raise ValueError(f"test_size is (shortest edge, longest edge), two positive sizes: got {self.test_size}.")
        check_task(self.task)
        if self.dataset not in ("cityscapes", "ade20k", "hub"):
            raise ValueError(f"Unknown dataset {self.dataset!r}: use 'cityscapes', 'ade20k' or 'hub'.")
        if self.column_mapping is not None and self.dataset != "hub":
            raise ValueError(
                f"column_mapping renames the columns of a dataset='hub' source; the {self.dataset} loader names its "
                "own columns: drop column_mapping or use dataset='hub'."
            )
        if self.batch_size < 2:
            raise ValueError(
                "batch_size 1 cannot train PEM: its pixel decoder applies BatchNorm to 1x1 pooled maps, which needs "
                "at least 2 images per process. Use a batch size of 2 or more (with gradient_accumulation_steps to "
                "keep memory low)."
            )
        recipe = self.recipe()
        if recipe["warmup_steps"] >= recipe["max_steps"]:
            warnings.warn(
                f"warmup_steps={recipe['warmup_steps']} is not shorter than max_steps={recipe['max_steps']}: the "
                "learning rate never reaches its peak. Lower warmup_steps if that is not meant.",
                stacklevel=3,
            )

    def _check_labels(self) -> None:
        if self.thing_ids is not None and self.id2label is None:
            raise ValueError(
                "thing_ids names the thing classes of a custom label set: pass id2label with it (without id2label "
                "the preset's dataset labels, and their thing classes, are used)."
            )
        if self.id2label is None:
            return
        if not isinstance(self.id2label, dict):
            raise ValueError(
                "id2label maps class indices to names, e.g. {0: 'road', 1: 'car'}; got "
                f"{type(self.id2label).__name__} {self.id2label!r}."
            )
        try:
            self.id2label = {int(index): name for index, name in self.id2label.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"id2label keys are class indices (0, 1, ...), got {list(self.id2label)!r}: e.g. {{0: 'road', 1: "
                "'car'}."
            ) from None

    def _check_numbers(self) -> None:
        for name, minimum in _MINIMUMS.items():
            value = getattr(self, name)
            if value is None:
                continue
            integral = isinstance(minimum, int)
            if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
                kind = "a whole number" if integral else "a number"
                raise ValueError(f"{name} must be {kind}, got {value!r}.")
            if not math.isfinite(value) or value < minimum or (name in _EXCLUSIVE and value == minimum):
                bound = f"more than {minimum}" if name in _EXCLUSIVE else f"at least {minimum}"
                raise ValueError(f"{name} must be {bound}, got {value!r}.")

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
