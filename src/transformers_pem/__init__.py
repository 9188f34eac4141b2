"""transformers-pem: PEM (Prototype-based Efficient MaskFormer, CVPR 2024) for Hugging Face transformers.

Importing the package registers PEM and the STDC backbone with the transformers Auto classes.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)

from .configuration_pem import PEMConfig
from .configuration_stdc import STDCConfig
from .modeling_pem import PEMForUniversalSegmentation, PEMModel, PEMPreTrainedModel
from .modeling_stdc import STDCBackbone

__version__ = "0.1.0"

AutoConfig.register("pem", PEMConfig, exist_ok=True)
AutoConfig.register("stdc", STDCConfig, exist_ok=True)
AutoBackbone.register(STDCConfig, STDCBackbone, exist_ok=True)
AutoModel.register(PEMConfig, PEMModel, exist_ok=True)
AutoModelForUniversalSegmentation.register(PEMConfig, PEMForUniversalSegmentation, exist_ok=True)
# pipeline("image-segmentation") loads models through AutoModelForSemanticSegmentation.
AutoModelForSemanticSegmentation.register(PEMConfig, PEMForUniversalSegmentation, exist_ok=True)

__all__ = [
    "PEMConfig",
    "PEMForUniversalSegmentation",
    "PEMModel",
    "PEMPreTrainedModel",
    "STDCBackbone",
    "STDCConfig",
]
