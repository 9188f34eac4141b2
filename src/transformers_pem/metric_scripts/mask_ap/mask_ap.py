"""`evaluate.load("<this folder>")`: the streaming instance mask AP metric of `transformers_pem.metrics_pem`."""

from transformers_pem.metrics_pem import MaskAP

__all__ = ["MaskAP"]
