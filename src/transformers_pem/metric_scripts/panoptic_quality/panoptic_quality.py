"""`evaluate.load("<this folder>")`: the streaming panoptic quality metric of `transformers_pem.metrics_pem`."""

from transformers_pem.metrics_pem import PanopticQuality

__all__ = ["PanopticQuality"]
