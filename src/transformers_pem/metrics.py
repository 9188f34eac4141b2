"""`transformers_pem.metrics`, the metrics' former home, kept as an alias of `metrics_pem`."""

from .metrics_pem import MaskAP, MeanIoU, PanopticQuality

__all__ = ["MaskAP", "MeanIoU", "PanopticQuality"]
