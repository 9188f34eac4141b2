"""`evaluate.load("<this folder>")`: the streaming mean IoU metric of `transformers_pem.evaluation.metrics`."""

from transformers_pem.evaluation.metrics import MeanIoU

__all__ = ["MeanIoU"]
