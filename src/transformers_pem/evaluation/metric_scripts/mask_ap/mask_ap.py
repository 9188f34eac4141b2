"""`evaluate.load("<this folder>")`: the streaming instance mask AP metric of `transformers_pem.evaluation.metrics`."""

from transformers_pem.evaluation.metrics import MaskAP

__all__ = ["MaskAP"]
