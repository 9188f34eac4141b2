"""Script for `evaluate.load("<this folder>")`: the streaming panoptic quality metric of `transformers_pem.metrics`."""

from transformers_pem.metrics import PanopticQuality

__all__ = ["PanopticQuality"]
