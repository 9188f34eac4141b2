"""`evaluate.load("<this folder>")`: the streaming panoptic quality metric of `transformers_pem.metrics_pem`."""

from ...metrics import PanopticQuality

__all__ = ["PanopticQuality"]
