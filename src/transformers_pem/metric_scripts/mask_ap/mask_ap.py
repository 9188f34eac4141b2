"""Script for `evaluate.load("<this folder>")`: the streaming instance mask AP metric of `transformers_pem.metrics`."""

from transformers_pem.metrics import MaskAP

__all__ = ["MaskAP"]
