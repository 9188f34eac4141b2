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
from .inference.allocator import tune_glibc_malloc
from .inference.precision import precision_autocast
from .inference.predictor import predict
from .modeling_pem import PEMForUniversalSegmentation, PEMModel, PEMPreTrainedModel
from .modeling_stdc import STDCBackbone
from .presets_pem import PRESETS, get_preset, official_crop_size, official_tta_settings
from .visualization.prototypes import draw_prototypes
from .visualization.segmentation import draw_segmentation

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
PEMImageProcessorPil.register_for_auto_class("AutoImageProcessor")

# The applications' public names, each imported from its module on first use: they need the package's extras.
_LAZY_ATTRIBUTES = {
    "load_cityscapes": "data.loaders",
    "load_ade20k": "data.loaders",
    "load_segmentation_dataset": "data.loaders",
    "official_train_augmentation": "data.augmentation",
    "PEMSegmentationTransform": "data.augmentation",
    "AugmentedSegmentationDataset": "data.augmentation",
    "collate_fn": "data.augmentation",
    "TrainingConfig": "training.config",
    "plot_training_curves": "training.scalars",
    "train": "training.loop",
    "evaluate_model": "evaluation.evaluate",
    "format_results_table": "evaluation.evaluate",
    "PEMTrainerMetrics": "evaluation.evaluate",
    "PredictionExporter": "evaluation.submission",
    "MeanIoU": "evaluation.metrics",
    "PanopticQuality": "evaluation.metrics",
    "MaskAP": "evaluation.metrics",
    "load_backbone_weights": "conversion.checkpoint_io",
    "load_official_checkpoint": "conversion.checkpoint_io",
    "PEMOnnxModel": "deploy.onnx_model",
    "PEMOpenVINOModel": "deploy.openvino_model",
    "export_openvino": "deploy.openvino_export",
    "export_onnx": "deploy.onnx_export",
    "export_program": "deploy.onnx_export",
    "PEMImageSegmentationPipeline": "inference.pipeline",
}


def __getattr__(name: str):  # the lazy names; `__all__` (what `import *` gives) lists the others only
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
]
