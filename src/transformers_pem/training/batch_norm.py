"""BatchNorm in training: statistics recomputed after the last step, frozen for the backbone (detectron2 FrozenBN),
and turned back into plain BatchNorm2d for the saved model."""

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


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


def plain_batch_norm(model: nn.Module) -> nn.Module:
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
            plain_batch_norm(child)
    return model
