"""Mixed precision of inference: the model under autocast, post-processing in float32."""

import contextlib

import torch

# "fp32", or "amp": the model under autocast (bfloat16 on CPU, float16 on CUDA).
PRECISIONS = ("fp32", "amp")


def precision_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context of a precision in `PRECISIONS`: nothing for "fp32"; for "amp", autocast to float16 on CUDA and to
    bfloat16 on CPU."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
