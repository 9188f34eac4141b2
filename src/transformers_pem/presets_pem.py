"""The 12 official PEM configurations, one frozen record each (as timm's `default_cfgs`).

Every number comes from the official configs, `configs/<dataset>/<task>-segmentation/{Base-*,pem_*}.yaml` of the PEM
repository (the test `tests/test_presets.py` compares the table with them), and the paper's results from its
Tables 1-4. The settings of a dataset and task (test size, test-time augmentation, training crop and augmentation,
schedule) are shared by the three backbones and stated once, in `PROTOCOLS`; `PRESETS` adds what differs per backbone.
"""

from dataclasses import dataclass, field
from typing import Any

from .labels_pem import thing_ids_of

BACKBONES = ("r50", "stdc1", "stdc2")
DATASETS = ("cityscapes", "ade20k")
TASKS = ("semantic", "instance", "panoptic")


@dataclass(frozen=True)
class Protocol:
    """The official settings of one dataset and task (`Base-*.yaml`, `SOLVER` and `INPUT` sections)."""

    test_size: tuple[int, int]  # INPUT.MIN_SIZE_TEST (shortest edge), INPUT.MAX_SIZE_TEST (longest edge)
    tta_min_sizes: tuple[int, ...]  # TEST.AUG.MIN_SIZES, with horizontal flips (TEST.AUG.FLIP)
    tta_max_size: int  # TEST.AUG.MAX_SIZE
    train_base_size: int  # INPUT.MIN_SIZE_TRAIN = [int(x * 0.1 * train_base_size) for x in range(5, 21)]
    train_max_size: int  # INPUT.MAX_SIZE_TRAIN
    crop_size: tuple[int, int]  # INPUT.CROP.SIZE (absolute), SINGLE_CATEGORY_MAX_AREA 1.0
    pad_crops: bool  # INPUT.SIZE_DIVISIBILITY > 0: smaller crops are padded to the crop size
    learning_rate: float  # SOLVER.BASE_LR
    end_learning_rate: float  # SOLVER.BASE_LR_END
    max_steps: int  # SOLVER.MAX_ITER
    # Shared by every official config: AdamW, WarmupCosineLR without warm-up, full-model gradient clipping, SSD
    # colour augmentation and flips.
    batch_size: int = 32  # SOLVER.IMS_PER_BATCH
    weight_decay: float = 0.05
    backbone_lr_multiplier: float = 0.1
    clip_grad_norm: float = 0.01
    warmup_steps: int = 0

    @property
    def train_min_sizes(self) -> list[int]:
        return [int(x * 0.1 * self.train_base_size) for x in range(5, 21)]


_CITYSCAPES = Protocol(
    test_size=(1024, 2048),
    tta_min_sizes=(512, 768, 1024, 1280, 1536, 1792),
    tta_max_size=4096,
    train_base_size=1024,
    train_max_size=4096,
    crop_size=(512, 1024),
    pad_crops=False,
    learning_rate=7e-4,
    end_learning_rate=0.0,
    max_steps=90_000,
)

# (dataset, task) -> protocol. The instance task has no official config: it runs the panoptic models and settings.
PROTOCOLS: dict[tuple[str, str], Protocol] = {
    ("cityscapes", "semantic"): _CITYSCAPES,
    ("cityscapes", "panoptic"): _CITYSCAPES,
    ("ade20k", "semantic"): Protocol(
        test_size=(512, 2048),
        tta_min_sizes=(256, 384, 512, 640, 768, 896),
        tta_max_size=3584,
        train_base_size=512,
        train_max_size=2048,
        crop_size=(512, 512),
        pad_crops=True,
        learning_rate=4e-4,
        end_learning_rate=1e-6,
        max_steps=160_000,
    ),
    ("ade20k", "panoptic"): Protocol(
        test_size=(640, 2560),
        tta_min_sizes=(320, 480, 640, 800, 960, 1120),
        tta_max_size=4480,
        train_base_size=640,
        train_max_size=2560,
        crop_size=(640, 640),
        pad_crops=True,
        learning_rate=4e-4,
        end_learning_rate=1e-6,
        max_steps=160_000,
    ),
}


def check_task(task: str) -> None:
    """Raise a `ValueError` naming the tasks if `task` is not one of `TASKS`."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}: use one of {TASKS}.")


def get_protocol(dataset: str, task: str) -> Protocol:
    """The official settings of a dataset (`"cityscapes"`, `"ade20k"`) and task (`"semantic"`, `"instance"`,
    `"panoptic"`; instance uses the panoptic settings)."""
    check_task(task)
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}: official settings exist for {DATASETS}.")
    return PROTOCOLS[dataset, "semantic" if task == "semantic" else "panoptic"]


def official_tta_settings(dataset: str, task: str) -> dict[str, Any]:
    """
    The official multi-scale + flip test-time augmentation of a dataset (`"cityscapes"`, `"ade20k"`) and task, as
    keyword arguments of `predict` / `evaluate_model`: `{"scales": [...], "max_size": ..., "flip": True}`.
    """
    protocol = get_protocol(dataset, task)
    return {"scales": list(protocol.tta_min_sizes), "max_size": protocol.tta_max_size, "flip": True}


def official_crop_size(dataset: str, task: str) -> tuple[int, int]:
    """The official training crop `(height, width)` of a dataset and task: the natural sliding window."""
    return get_protocol(dataset, task).crop_size


@dataclass(frozen=True)
class PEMPreset:
    """One official configuration, `pem-<backbone>-<dataset>-<task>`."""

    backbone: str  # "r50", "stdc1" or "stdc2"
    dataset: str  # "cityscapes" or "ade20k"
    task: str  # "semantic" or "panoptic"
    # The ADE20K STDC configs are named `*_bs32_90k.yaml` but inherit the 160k R50 schedule through a `_BASE_` file
    # that does not exist in the repository; the file name's 90k is used.
    max_steps: int | None = None  # None: the protocol's
    # MODEL.RESNETS.NORM: FrozenBN (the default) in the ADE20K R50 configs, SyncBN everywhere else.
    frozen_backbone_batch_norm: bool = False
    paper_result: str | None = field(default=None, compare=False)  # CVPR 2024, Tables 1-4; FPS on a V100-class GPU

    @property
    def name(self) -> str:
        return f"pem-{self.backbone}-{self.dataset}-{self.task}"

    @property
    def protocol(self) -> Protocol:
        return PROTOCOLS[self.dataset, self.task]

    @property
    def training_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.protocol.max_steps

    @property
    def thing_ids(self) -> list[int]:
        return thing_ids_of(self.dataset)


PRESETS: dict[str, PEMPreset] = {
    preset.name: preset
    for preset in (
        PEMPreset("r50", "cityscapes", "semantic", paper_result="79.9 mIoU (13.8 FPS, 240 GFLOPs)"),
        PEMPreset(
            "r50", "cityscapes", "panoptic", paper_result="61.1 PQ, PQ^th 54.3, PQ^st 66.1 (13.8 FPS, 237 GFLOPs)"
        ),
        PEMPreset(
            "r50",
            "ade20k",
            "semantic",
            frozen_backbone_batch_norm=True,
            paper_result="45.5 mIoU (35.7 FPS, 46.9 GFLOPs)",
        ),
        PEMPreset(
            "r50",
            "ade20k",
            "panoptic",
            frozen_backbone_batch_norm=True,
            paper_result="38.5 PQ, PQ^th 37.0, PQ^st 41.1 (35.7 FPS, 47 GFLOPs)",
        ),
        PEMPreset("stdc1", "cityscapes", "semantic", paper_result="78.3 mIoU (24.3 FPS, 92 GFLOPs)"),
        PEMPreset("stdc1", "cityscapes", "panoptic"),
        PEMPreset("stdc1", "ade20k", "semantic", max_steps=90_000, paper_result="39.6 mIoU (43.6 FPS, 16.0 GFLOPs)"),
        PEMPreset("stdc1", "ade20k", "panoptic", max_steps=90_000),
        PEMPreset("stdc2", "cityscapes", "semantic", paper_result="79.0 mIoU (22.0 FPS, 118 GFLOPs)"),
        PEMPreset("stdc2", "cityscapes", "panoptic"),
        PEMPreset("stdc2", "ade20k", "semantic", max_steps=90_000, paper_result="45.0 mIoU (36.3 FPS, 19.3 GFLOPs)"),
        PEMPreset("stdc2", "ade20k", "panoptic", max_steps=90_000),
    )
}

# STDC `layers` (blocks per bottleneck stage) of the two official STDC backbones.
STDC_LAYERS = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}
STDC_NAMES = {layers: name for name, layers in STDC_LAYERS.items()}


def get_preset(name: str) -> PEMPreset:
    """The record of an official configuration, e.g. `get_preset("pem-stdc1-cityscapes-panoptic")`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown PEM preset {name!r}. Available presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


__all__ = ["PEMPreset", "PRESETS", "PROTOCOLS", "Protocol", "check_task", "get_preset", "get_protocol"]
