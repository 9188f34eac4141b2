"""`evaluate.load("<this folder>")`: the streaming mean IoU metric of `transformers_pem.metrics_pem`."""

from ...metrics import MeanIoU

__all__ = ["MeanIoU"]
