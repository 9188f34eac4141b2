"""transformers-pem: PEM (Prototype-based Efficient MaskFormer, CVPR 2024) for Hugging Face transformers.

Importing the package registers PEM and the STDC backbone with the transformers Auto classes. It loads the model,
processor and inference modules only; the data, training, evaluation and conversion APIs are imported on first use
(`transformers_pem.train`, ...) and need the package's extras (`pip install "transformers-pem[train,eval]"`).
"""

import importlib

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)

from .configuration_pem import PEMConfig
from .configuration_stdc import STDCConfig
from .image_processing_pem import PEMImageProcessor
from .image_processing_pem_pil import PEMImageProcessorPil
from .inference_pem import official_crop_size, official_tta_settings, precision_autocast, predict, tune_glibc_malloc
from .modeling_pem import PEMForUniversalSegmentation, PEMModel, PEMPreTrainedModel
from .modeling_stdc import STDCBackbone
from .presets_pem import PRESETS, get_preset
from .visualization_pem import draw_prototypes, draw_segmentation

__version__ = "0.1.0"

AutoConfig.register("pem", PEMConfig, exist_ok=True)
AutoConfig.register("stdc", STDCConfig, exist_ok=True)
AutoBackbone.register(STDCConfig, STDCBackbone, exist_ok=True)
AutoModel.register(PEMConfig, PEMModel, exist_ok=True)
AutoModelForUniversalSegmentation.register(PEMConfig, PEMForUniversalSegmentation, exist_ok=True)
# pipeline("image-segmentation") loads models through AutoModelForSemanticSegmentation.
AutoModelForSemanticSegmentation.register(PEMConfig, PEMForUniversalSegmentation, exist_ok=True)
AutoImageProcessor.register(
    PEMConfig, image_processor_classes={"torchvision": PEMImageProcessor, "pil": PEMImageProcessorPil}, exist_ok=True
)
# Saved checkpoints carry the module files and an `auto_map`, so they load with trust_remote_code=True in processes
# that never imported transformers_pem (PEMPreTrainedModel.save_pretrained adds the other Auto classes).
PEMConfig.register_for_auto_class()
PEMForUniversalSegmentation.register_for_auto_class("AutoModelForUniversalSegmentation")
PEMImageProcessor.register_for_auto_class("AutoImageProcessor")

# Names of the modules with optional dependencies, imported when first used.
_LAZY_ATTRIBUTES = {
    "load_cityscapes": "datasets_pem",
    "load_ade20k": "datasets_pem",
    "load_segmentation_dataset": "datasets_pem",
    "official_train_augmentation": "augmentation_pem",
    "PEMSegmentationTransform": "augmentation_pem",
    "AugmentedSegmentationDataset": "augmentation_pem",
    "collate_fn": "augmentation_pem",
    "TrainingConfig": "training_pem",
    "train": "training_pem",
    "evaluate_model": "evaluation_pem",
    "format_results_table": "evaluation_pem",
    "PEMTrainerMetrics": "evaluation_pem",
    "PredictionExporter": "submission_pem",
    "MeanIoU": "metrics_pem",
    "PanopticQuality": "metrics_pem",
    "MaskAP": "metrics_pem",
    "load_backbone_weights": "checkpoint_io_pem",
    "load_official_checkpoint": "checkpoint_io_pem",
    "PEMOnnxModel": "modeling_onnx_pem",
    "export_onnx": "export_pem",
    "export_program": "export_pem",
}


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "PEMConfig",
    "PEMForUniversalSegmentation",
    "PEMImageProcessor",
    "PEMImageProcessorPil",
    "PEMModel",
    "PEMPreTrainedModel",
    "STDCBackbone",
    "STDCConfig",
    "draw_prototypes",
    "draw_segmentation",
    "get_preset",
    "official_crop_size",
    "official_tta_settings",
    "precision_autocast",
    "predict",
    "tune_glibc_malloc",
    *_LAZY_ATTRIBUTES,
]
