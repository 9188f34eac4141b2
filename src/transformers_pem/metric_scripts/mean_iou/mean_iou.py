"""`evaluate.load("<this folder>")`: the streaming mean IoU metric of `transformers_pem.metrics_pem`."""

from transformers_pem.metrics_pem import MeanIoU

__all__ = ["MeanIoU"]
