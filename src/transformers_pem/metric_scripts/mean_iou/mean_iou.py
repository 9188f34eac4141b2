"""Script for `evaluate.load("<this folder>")`: the streaming mean IoU metric of `transformers_pem.metrics`."""

from transformers_pem.metrics import MeanIoU

__all__ = ["MeanIoU"]
