"""The official optimiser (AdamW with a slower backbone, no decay on norms and embeddings) and schedule
(detectron2's `WarmupCosineLR`)."""

import math

import torch
from torch import nn

from ..modeling_pem import PEMForUniversalSegmentation


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
