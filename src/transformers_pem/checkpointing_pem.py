"""Activation checkpointing of PEM's blocks: transformers' `GradientCheckpointingLayer`, with BatchNorm statistics
updated once per training step.

The backward pass recomputes the forward of a checkpointed block, and in training mode its BatchNorm layers would
then update their running statistics a second time (`torch.utils.checkpoint` replays the forward as it ran). During
the recomputation they still normalise with the batch statistics (so the gradients are the plain run's) but keep
their running statistics and batch counter, so that a checkpointed step leaves the buffers of a plain step.
"""

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


@contextlib.contextmanager
def _running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Run the block with the running statistics of the training-mode BatchNorms below `module` unchanged: momentum
    0 leaves them as they are (`(1 - 0) * running + 0 * batch`), and the batch counter is restored after."""
    norms = [
        norm
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and norm.track_running_stats
    ]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, batches) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(batches)


def _uses_reentrant_checkpoint(function: Callable) -> bool:
    """Whether `function` (transformers' `partial(checkpoint, **kwargs)`) runs the reentrant checkpoint, which takes
    no `context_fn`."""
    keywords = getattr(function, "keywords", {})
    return keywords.get("use_reentrant", True) is not False


class PEMCheckpointingLayer(GradientCheckpointingLayer):
    """A block that `model.activation_checkpointing_enable()` checkpoints (transformers' `GradientCheckpointingLayer`),
    whose recomputation leaves the BatchNorm running statistics alone. With the reentrant checkpoint
    (`use_reentrant=True`), which cannot run code around the recomputation, they are updated twice per step."""

    @property
    def _gradient_checkpointing_func(self) -> Callable:
        function = self._checkpoint_function
        if _uses_reentrant_checkpoint(function):
            return function
        return partial(function, context_fn=lambda: (contextlib.nullcontext(), _running_statistics_kept(self)))

    @_gradient_checkpointing_func.setter
    def _gradient_checkpointing_func(self, function: Callable) -> None:
        self._checkpoint_function = function

    @_gradient_checkpointing_func.deleter
    def _gradient_checkpointing_func(self) -> None:
        self.__dict__.pop("_checkpoint_function", None)


__all__ = ["PEMCheckpointingLayer"]
