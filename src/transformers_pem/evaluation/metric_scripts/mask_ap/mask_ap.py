"""`evaluate.load("<this folder>")`: the streaming instance mask AP metric of `transformers_pem.metrics_pem`."""

from ...metrics import MaskAP

__all__ = ["MaskAP"]
