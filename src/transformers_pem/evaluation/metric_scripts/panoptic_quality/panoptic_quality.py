"""`evaluate.load("<this folder>")`: the streaming panoptic quality metric of `transformers_pem.evaluation.metrics`."""

from transformers_pem.evaluation.metrics import PanopticQuality

__all__ = ["PanopticQuality"]
