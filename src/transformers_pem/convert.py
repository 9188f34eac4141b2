"""Convert official PEM checkpoints (detectron2) to transformers-pem, and load ImageNet backbone weights.

Command line (also `scripts/convert_pem_original_to_hf.py`):

    # a trained official checkpoint + its official yaml (or a preset name) -> a `save_pretrained` directory
    python -m transformers_pem.convert --checkpoint model_final.pth \
        --config configs/cityscapes/semantic-segmentation/pem_STDC1_bs32_90k.yaml --output-dir pem-stdc1-cityscapes

    # ImageNet backbone weights -> a PEM with a pretrained backbone and a fresh head, to start training from
    python -m transformers_pem.convert --backbone-weights STDCNet813M_73.91.tar \
        --config pem-stdc1-cityscapes-semantic --output-dir pem-stdc1-cityscapes-init

Checkpoints are read without executing code from them: `.pth`/`.pt`/`.bin`/`.tar` with
`torch.load(weights_only=True)`, detectron2 `.pkl` files with an unpickler that only rebuilds numpy arrays and torch
tensors, and `.safetensors`. Every official key is mapped (or, for the STDC `backbone.x{2..32}.*` aliases, checked
to equal the tensor it duplicates); anything unmapped, missing or mis-shaped stops the conversion with the list of
offending keys.
"""

import argparse
import ast
import codecs
import copy
import io
import logging
import math
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from huggingface_hub import HfApi
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import ResNetBackbone, ResNetConfig
from transformers.models.timm_backbone import TimmBackbone

from .configuration_pem import PEMConfig
from .configuration_stdc import STDCConfig
from .image_processing_pem import PEMImageProcessor
from .labels_pem import DATASET_LABELS
from .modeling_pem import PEMForUniversalSegmentation, PEMModel
from .modeling_stdc import STDCBackbone

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "model.pixel_level_module.encoder."

# ---------------------------------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------------------------------

Replacement = str | Callable[[re.Match], str]


def _resnet_block(match: re.Match) -> str:
    """`backbone.res{2..5}.{i}.{conv1,conv2,conv3,shortcut}[.norm].` -> transformers `ResNetBackbone` names."""
    stage, block, part = int(match["stage"]) - 2, match["block"], match["part"]
    module = "shortcut" if part == "shortcut" else f"layer.{int(part[-1]) - 1}"
    kind = "normalization." if match["norm"] else "convolution."
    return f"{ENCODER_PREFIX}encoder.stages.{stage}.layers.{block}.{module}.{kind}"


# Official key prefix (regex) -> our prefix. Applied in order; the first match wins.
_RULES: list[tuple[str, Replacement]] = [
    # Pixel decoder
    (
        r"^sem_seg_head\.pixel_decoder\.in_projections\.(\d+)\.conv\.",
        r"model.pixel_level_module.decoder.input_projections.\1.conv.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.in_projections\.(\d+)\.bn\.",
        r"model.pixel_level_module.decoder.input_projections.\1.norm.",
    ),
    (r"^sem_seg_head\.pixel_decoder\.conv_avg\.conv\.", r"model.pixel_level_module.decoder.global_context.conv."),
    (r"^sem_seg_head\.pixel_decoder\.conv_avg\.bn\.", r"model.pixel_level_module.decoder.global_context.norm."),
    (
        r"^sem_seg_head\.pixel_decoder\.csm\.(\d+)\.mlp\.0\.mlp\.0\.",
        r"model.pixel_level_module.decoder.modulations.\1.reduce.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.csm\.(\d+)\.mlp\.0\.mlp\.1\.",
        r"model.pixel_level_module.decoder.modulations.\1.norm.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.csm\.(\d+)\.mlp\.0\.mlp\.3\.",
        r"model.pixel_level_module.decoder.modulations.\1.expand.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.dcn\.(\d+)\.dcn_offset\.",
        r"model.pixel_level_module.decoder.deformable_layers.\1.offset_conv.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.dcn\.(\d+)\.dcn\.",
        r"model.pixel_level_module.decoder.deformable_layers.\1.deform_conv.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.dcn\.(\d+)\.dcn_bn\.",
        r"model.pixel_level_module.decoder.deformable_layers.\1.deform_norm.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.dcn\.(\d+)\.up_sample\.",
        r"model.pixel_level_module.decoder.deformable_layers.\1.upsample.",
    ),
    (
        r"^sem_seg_head\.pixel_decoder\.dcn\.(\d+)\.up_bn\.",
        r"model.pixel_level_module.decoder.deformable_layers.\1.upsample_norm.",
    ),
    (r"^sem_seg_head\.pixel_decoder\.out\.conv\.", r"model.pixel_level_module.decoder.mask_projection.conv."),
    (r"^sem_seg_head\.pixel_decoder\.out\.bn\.", r"model.pixel_level_module.decoder.mask_projection.norm."),
    # Transformer decoder: PEM-CA
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.feature_proj\.bn\.",
        r"model.transformer_module.layers.\1.cross_attn.memory_norm.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.feature_proj\.to_query_3x3\.",
        r"model.transformer_module.layers.\1.cross_attn.memory_conv.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.feature_proj\.out\.",
        r"model.transformer_module.layers.\1.cross_attn.memory_proj.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.query_proj\.0\.",
        r"model.transformer_module.layers.\1.cross_attn.query_norm.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.query_proj\.1\.",
        r"model.transformer_module.layers.\1.cross_attn.query_proj.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.proj\.",
        r"model.transformer_module.layers.\1.cross_attn.modulation_proj.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.final\.",
        r"model.transformer_module.layers.\1.cross_attn.out_proj.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.alpha$",
        r"model.transformer_module.layers.\1.cross_attn.alpha",
    ),
    # Transformer decoder: self-attention and FFN
    (
        r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.",
        r"model.transformer_module.layers.\1.self_attn.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
        r"model.transformer_module.layers.\1.self_attn_layer_norm.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.linear1\.",
        r"model.transformer_module.layers.\1.fc1.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.linear2\.",
        r"model.transformer_module.layers.\1.fc2.",
    ),
    (
        r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.norm\.",
        r"model.transformer_module.layers.\1.final_layer_norm.",
    ),
    # Transformer decoder: queries, levels, heads
    (r"^sem_seg_head\.predictor\.decoder_norm\.", r"model.transformer_module.layernorm."),
    (r"^sem_seg_head\.predictor\.query_feat\.", r"model.transformer_module.queries_features."),
    (r"^sem_seg_head\.predictor\.query_embed\.", r"model.transformer_module.queries_embedder."),
    (r"^sem_seg_head\.predictor\.level_embed\.", r"model.transformer_module.level_embed."),
    (r"^sem_seg_head\.predictor\.input_proj\.(\d+)\.", r"model.transformer_module.input_projections.\1."),
    (r"^sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.", r"model.transformer_module.mask_embedder.layers.\1."),
    (r"^sem_seg_head\.predictor\.class_embed\.", r"class_predictor."),
    (r"^criterion\.empty_weight$", r"criterion.empty_weight"),
    # STDC: our module tree keeps the official names.
    (r"^backbone\.features\.", ENCODER_PREFIX + "features."),
    (r"^backbone\.conv_last\.", ENCODER_PREFIX + "conv_last."),
    # ResNet (detectron2 names; stride in the 3x3 conv like transformers' ResNet with downsample_in_bottleneck=False)
    (
        r"^backbone\.stem\.conv1\.(?P<norm>norm\.)?",
        lambda match: f"{ENCODER_PREFIX}embedder.embedder.{'normalization.' if match['norm'] else 'convolution.'}",
    ),
    (
        r"^backbone\.res(?P<stage>[2-5])\.(?P<block>\d+)\.(?P<part>conv[1-3]|shortcut)\.(?P<norm>norm\.)?",
        _resnet_block,
    ),
]
_COMPILED_RULES = [(re.compile(pattern), replacement) for pattern, replacement in _RULES]

# STDC stage containers `x2, x4, x8, x16, x32` register slices of `features` a second time, and slicing an
# `nn.Sequential` keeps the module names: `backbone.x{s}.0.{j}.*` is `backbone.features.{j}.*`.
_STDC_ALIAS = re.compile(r"^backbone\.x(?:2|4|8|16|32)\.0\.(?P<block>\d+)\.(?P<rest>.+)$")

# torchvision / timm ResNet names -> detectron2 names (the renaming of detectron2's convert-torchvision-to-d2.py).
_TORCHVISION_RESNET_RULES: list[tuple[str, Replacement]] = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer([1-4])\.(\d+)\.conv([1-3])\.", lambda match: f"res{int(match[1]) + 1}.{match[2]}.conv{match[3]}."),
    (r"^layer([1-4])\.(\d+)\.bn([1-3])\.", lambda match: f"res{int(match[1]) + 1}.{match[2]}.conv{match[3]}.norm."),
    (r"^layer([1-4])\.(\d+)\.downsample\.0\.", lambda match: f"res{int(match[1]) + 1}.{match[2]}.shortcut."),
    (r"^layer([1-4])\.(\d+)\.downsample\.1\.", lambda match: f"res{int(match[1]) + 1}.{match[2]}.shortcut.norm."),
]
_COMPILED_TORCHVISION_RULES = [
    (re.compile(pattern), replacement) for pattern, replacement in _TORCHVISION_RESNET_RULES
]

# ImageNet classification heads, not part of a backbone: STDC `fc`, `bn` (BatchNorm1d) and `linear`; torchvision and
# timm `fc` (`stem.fc` after detectron2's renaming); transformers `ResNetForImageClassification` `classifier`.
_CLASSIFIER_KEY = re.compile(r"^(fc|bn|linear|classifier|stem\.fc)\.")


def _apply_rules(key: str, rules: list[tuple[re.Pattern, Replacement]]) -> str | None:
    for pattern, replacement in rules:
        new_key, count = pattern.subn(replacement, key, count=1)
        if count:
            return new_key
    return None


def rename_official_key(key: str) -> str | None:
    """Our name for an official PEM state-dict key, or `None` if no rule matches."""
    return _apply_rules(key, _COMPILED_RULES)


def torchvision_to_detectron2_key(key: str) -> str | None:
    """detectron2's name for a torchvision / timm ResNet key (`layer1.0.bn1.weight` -> `res2.0.conv1.norm.weight`), or
    `None` for keys outside the backbone (`fc.*`) or unknown keys."""
    return _apply_rules(key, _COMPILED_TORCHVISION_RULES)


def stdc_alias_map(keys: list[str]) -> dict[str, str]:
    """For the STDC alias keys among `keys` (`backbone.x{2,4,8,16,32}.0.{j}.*`), the `backbone.features.*` key each
    duplicates."""
    matches = {key: _STDC_ALIAS.match(key) for key in keys}
    return {key: f"backbone.features.{match['block']}.{match['rest']}" for key, match in matches.items() if match}


def convert_official_state_dict(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official PEM state dict (the `"model"` entry of a detectron2 checkpoint) to our names.

    - STDC alias keys (`backbone.x{2,4,8,16,32}.*`) must equal the `backbone.features.*` tensor they duplicate (which
      they are in every official checkpoint); they are then dropped, or used for it if it is absent.
    - BatchNorms without `num_batches_tracked` (detectron2's FrozenBN, used by the ADE20K ResNet-50 configs: weight,
      bias, running_mean and running_var buffers) get `num_batches_tracked = 0`; their eval-mode output is the same.

    Returns the renamed state dict and the official keys that no rule matched.
    """
    state_dict = dict(state_dict)
    conflicting = []
    for alias, canonical in stdc_alias_map(list(state_dict)).items():
        tensor = state_dict.pop(alias)
        if canonical not in state_dict:
            state_dict[canonical] = tensor
        elif state_dict[canonical].shape != tensor.shape or not torch.equal(state_dict[canonical], tensor):
            conflicting.append(f"{alias} != {canonical}")
    if conflicting:
        raise ValueError(
            "The STDC alias keys of this checkpoint must equal the `backbone.features.*` tensors they duplicate, but "
            f"{len(conflicting)} differ: {_format_keys(conflicting)}. The checkpoint was modified after training; "
            "remove the `backbone.x{2,4,8,16,32}.*` keys (the model uses `backbone.features.*`) and convert again."
        )

    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        new_key = rename_official_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    for key in [key for key in converted if key.endswith(".running_var")]:
        counter = key.removesuffix("running_var") + "num_batches_tracked"
        if counter not in converted:
            converted[counter] = torch.tensor(0, dtype=torch.long)
    return converted, unmapped


# ---------------------------------------------------------------------------------------------------------------------
# Reading checkpoints without executing code
# ---------------------------------------------------------------------------------------------------------------------


def _load_storage_from_bytes(data: bytes):
    """Safe stand-in for `torch.storage._load_from_bytes`, which `pickle` uses for torch tensors saved with plain
    `pickle.dump` (e.g. the official `convert-pretrained-stdc-model-to-d2.py` output)."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_attribute(module: str, name: str):
    """`numpy._core.<module>.<name>` (numpy >= 2) or `numpy.core.<module>.<name>` (numpy 1)."""
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


# The only globals a weights pickle may reference: numpy array / dtype / scalar reconstruction, torch tensor
# reconstruction (with a safe storage loader), ordered dicts and byte decoding of protocol-2 pickles.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (f"{package}.multiarray", name): _numpy_attribute("multiarray", name)
        for package in ("numpy.core", "numpy._core")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (f"{package}.numeric", "_frombuffer"): _numpy_attribute("numeric", "_frombuffer")
        for package in ("numpy.core", "numpy._core")
    },
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): codecs.encode,
}


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 `.pkl` weight files: refuses every global outside `_ALLOWED_PICKLE_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global `{module}.{name}`")
        return _ALLOWED_PICKLE_GLOBALS[module, name]


def _to_tensor(key: str, value) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic) and value.dtype != object:
        return torch.from_numpy(np.array(value))  # copy: arrays rebuilt from pickle bytes are read-only
    raise ValueError(f"Checkpoint entry {key!r} is a {type(value).__name__}, not a tensor or numeric array.")


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict without executing code from the file.

    - `.safetensors`: read directly.
    - `.pkl` / `.pickle` (detectron2): only numpy arrays, torch tensors and plain containers are rebuilt; a file that
      references anything else (which could run code) is refused with a `ValueError`.
    - anything else (`.pth`, `.pt`, `.bin`, `.tar`, ...): `torch.load(weights_only=True)`.

    A checkpoint dict is unwrapped from its `"model"` (detectron2) or `"state_dict"` (STDC-Seg) entry, and numpy
    arrays become tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        checkpoint = load_file(path)
    elif path.suffix in (".pkl", ".pickle") and not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            try:
                checkpoint = _WeightsUnpickler(file, encoding="latin1").load()
            except pickle.UnpicklingError as error:
                raise ValueError(
                    f"Refusing to load {str(path)!r}: {error}. A detectron2 weights file holds only numpy arrays or "
                    "tensors; this one references other Python objects, which could execute code. Convert the "
                    "checkpoint from its original `.pth` instead."
                ) from error
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"Refusing to load {str(path)!r} with `torch.load(weights_only=True)`: it contains Python objects "
                f"other than tensors ({error}). If you trust the file, extract its weights first, e.g. "
                "`torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')`, and convert that."
            ) from error

    while isinstance(checkpoint, dict):
        inner = next(
            (checkpoint[key] for key in ("model", "state_dict") if isinstance(checkpoint.get(key), dict)), None
        )
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, dict) or not all(isinstance(key, str) for key in checkpoint):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors, possibly under 'model' or "
            f"'state_dict'); found {type(checkpoint).__name__}."
        )
    return {key: _to_tensor(key, value) for key, value in checkpoint.items()}


def _strip_common_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` (e.g. DataParallel's `module.`) when every key has it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key.removeprefix(prefix): tensor for key, tensor in state_dict.items()}
    return state_dict


# ---------------------------------------------------------------------------------------------------------------------
# Official yaml configs
# ---------------------------------------------------------------------------------------------------------------------


class _OfficialConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also understands the one Python tag of the official configs (see `_eval_list`)."""


# `INPUT.MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 1024) for x in range(5, 21)]"]`
_MIN_SIZE_EXPRESSION = re.compile(
    r"\[\s*int\(\s*x\s*\*\s*(?P<factor>\d+(?:\.\d*)?)\s*\*\s*(?P<size>\d+)\s*\)\s+"
    r"for\s+x\s+in\s+range\(\s*(?P<start>\d+)\s*,\s*(?P<stop>\d+)\s*\)\s*\]"
)


def _eval_list(loader: yaml.SafeLoader, node: yaml.Node) -> list[int]:
    """Compute the official `[int(x * F * N) for x in range(A, B)]` expressions without `eval`."""
    arguments = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else []
    expression = arguments[0] if len(arguments) == 1 and isinstance(arguments[0], str) else None
    match = _MIN_SIZE_EXPRESSION.fullmatch(expression.strip()) if expression else None
    if match is None:
        raise ValueError(
            f"Unsupported `!!python/object/apply:eval` value {arguments!r} in the yaml: only expressions of the form "
            "`[int(x * 0.1 * 1024) for x in range(5, 21)]` are evaluated (yaml files are never executed). Replace it "
            "with an explicit list."
        )
    factor, size = float(match["factor"]), int(match["size"])
    return [int(x * factor * size) for x in range(int(match["start"]), int(match["stop"]))]


_OfficialConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _eval_list)

# detectron2 and `pem/config.py` (add_maskformer2_config) defaults of the settings the yaml files may leave out.
OFFICIAL_DEFAULTS = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
        },
        "STDC": {
            "LAYERS": [2, 2, 2],
            "BLOCK_NUM": 4,
            "BLOCK_TIPE": "cat",
            "USE_CONV_LAST": False,
            "NORM": "SyncBN",
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        },
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
            "MASK_DIM": 256,
            "TRANSFORMER_ENC_LAYERS": 0,
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
        },
        "MASK_FORMER": {
            "DEEP_SUPERVISION": True,
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 1.0,
            "DICE_WEIGHT": 1.0,
            "MASK_WEIGHT": 20.0,
            "NHEADS": 8,
            "DROPOUT": 0.1,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 6,
            "PRE_NORM": False,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "TRANSFORMER_IN_FEATURE": "res5",
            "ENFORCE_INPUT_PROJ": False,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": False,
                "PANOPTIC_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.0,
                "OVERLAP_THRESHOLD": 0.0,
                "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
            },
            "SIZE_DIVISIBILITY": 32,
            "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
            "TRAIN_NUM_POINTS": 112 * 112,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
        },
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": [800],
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "FORMAT": "BGR",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9], "SINGLE_CATEGORY_MAX_AREA": 1.0},
        "DATASET_MAPPER_NAME": "mask_former_semantic",
        "COLOR_AUG_SSD": False,
        "SIZE_DIVISIBILITY": -1,
        "IMAGE_SIZE": 1024,
        "MIN_SCALE": 0.1,
        "MAX_SCALE": 2.0,
    },
    "DATASETS": {"TRAIN": [], "TEST": []},
    "TEST": {
        "DETECTIONS_PER_IMAGE": 100,
        "EVAL_PERIOD": 0,
        "AUG": {"ENABLED": False, "MIN_SIZES": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200], "MAX_SIZE": 4000},
    },
}


def _decode_value(value):
    """Decode a yaml value as detectron2's config system does: strings that are Python literals (`"(512, 1024)"`,
    `"1e-6"`) become values (through `ast.literal_eval`, which evaluates literals only); tuples become lists."""
    if isinstance(value, dict):
        return {key: _decode_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_decode_value(item) for item in value]
    if isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
        return _decode_value(decoded) if decoded is None or isinstance(decoded, list | tuple | int | float) else value
    return value


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ValueError(f"The `_BASE_` chain of {str(seen[0])!r} loops through {str(path)!r}.")
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"Cannot read the config file {str(path)!r}: {error}.") from error
    try:
        config = yaml.load(text, Loader=_OfficialConfigLoader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Cannot parse {str(path)!r} (read with yaml.SafeLoader; no Python tags): {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} is not a detectron2 yaml config (its top level is not a mapping).")
    base = config.pop("_BASE_", None)
    if base is None:
        return config
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.is_file():
        # The official ADE20K STDC yamls name `pem_R50_bs32_90k.yaml`, but their folder has only the 160k R50 config,
        # which differs from a 90k one only in the schedule (see the README of the official-code reference data).
        fallback = base_path.with_name("pem_R50_bs32_160k.yaml")
        if base_path.name != "pem_R50_bs32_90k.yaml" or not fallback.is_file():
            raise ValueError(
                f"{str(path)!r} names `_BASE_: {base}`, but {str(base_path)!r} does not exist. Point `_BASE_` to the "
                "right file (the official configs come from the PEM repository's `configs/` folder)."
            )
        logger.warning(
            "%s names `_BASE_: %s`, which does not exist (a known issue of the official ADE20K STDC configs); using "
            "%s from the same folder instead.",
            path,
            base,
            fallback.name,
        )
        base_path = fallback
    return _merge(_load_yaml_chain(base_path, (*seen, path.resolve())), config)


def load_official_config(path: str | Path) -> dict:
    """Read an official PEM / detectron2 yaml config with its `_BASE_` chain, on top of the detectron2 and PEM
    defaults of the settings the converter uses (`OFFICIAL_DEFAULTS`). The yaml is parsed with `yaml.SafeLoader`; its
    one Python expression (`INPUT.MIN_SIZE_TRAIN`) is recognised and computed, never evaluated."""
    return _decode_value(_merge(OFFICIAL_DEFAULTS, _load_yaml_chain(Path(path))))


# ---------------------------------------------------------------------------------------------------------------------
# Official config -> PEMConfig + image processor
# ---------------------------------------------------------------------------------------------------------------------

_RESNET_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
_STDC_NAMES = {(2, 2, 2): "stdc1", (4, 5, 3): "stdc2"}

# Results of the official checkpoints in the paper (CVPR 2024, Tables 1-4); FPS measured on a V100-class GPU.
PAPER_RESULTS = {
    "pem-r50-cityscapes-semantic": "79.9 mIoU (13.8 FPS, 240 GFLOPs)",
    "pem-stdc1-cityscapes-semantic": "78.3 mIoU (24.3 FPS, 92 GFLOPs)",
    "pem-stdc2-cityscapes-semantic": "79.0 mIoU (22.0 FPS, 118 GFLOPs)",
    "pem-r50-cityscapes-panoptic": "61.1 PQ, PQ^th 54.3, PQ^st 66.1 (13.8 FPS, 237 GFLOPs)",
    "pem-r50-ade20k-semantic": "45.5 mIoU (35.7 FPS, 46.9 GFLOPs)",
    "pem-stdc1-ade20k-semantic": "39.6 mIoU (43.6 FPS, 16.0 GFLOPs)",
    "pem-stdc2-ade20k-semantic": "45.0 mIoU (36.3 FPS, 19.3 GFLOPs)",
    "pem-r50-ade20k-panoptic": "38.5 PQ, PQ^th 37.0, PQ^st 41.1 (35.7 FPS, 47 GFLOPs)",
}


@dataclass
class ConversionTarget:
    """What a `--config` resolves to.

    Attributes:
        config: the model configuration.
        image_processor: the processor with the configuration's test settings, or `None` if unknown.
        preset: the official configuration this is (see `PEMConfig.presets()`), or `None` for a custom one.
        source: where the configuration came from, for the model card.
    """

    config: PEMConfig
    image_processor: PEMImageProcessor | None
    preset: str | None
    source: str


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _backbone_from_official(model: dict) -> tuple[ResNetConfig | STDCConfig, str | None]:
    """Backbone config and preset name part (`r50`, `stdc1`, `stdc2` or `None`) of an official `MODEL` section."""
    out_features = ["stage1", "stage2", "stage3", "stage4"]
    name = model["BACKBONE"]["NAME"]
    if name == "D2STDCnet":
        stdc = model["STDC"]
        _require(
            stdc["OUT_FEATURES"] == ["res2", "res3", "res4", "res5"],
            f"MODEL.STDC.OUT_FEATURES must be [res2, res3, res4, res5], got {stdc['OUT_FEATURES']}.",
        )
        config = STDCConfig(
            layers=list(stdc["LAYERS"]),
            block_num=stdc["BLOCK_NUM"],
            block_type=stdc["BLOCK_TIPE"],
            use_conv_last=stdc["USE_CONV_LAST"],
            out_features=out_features,
        )
        official = stdc["BLOCK_NUM"] == 4 and stdc["BLOCK_TIPE"] == "cat" and not stdc["USE_CONV_LAST"]
        return config, _STDC_NAMES.get(tuple(stdc["LAYERS"])) if official else None
    if name == "build_resnet_backbone":
        resnet = model["RESNETS"]
        unsupported = {
            "DEPTH": (resnet["DEPTH"], "50, 101 or 152", resnet["DEPTH"] in _RESNET_DEPTHS),
            "NUM_GROUPS": (resnet["NUM_GROUPS"], "1", resnet["NUM_GROUPS"] == 1),
            "WIDTH_PER_GROUP": (resnet["WIDTH_PER_GROUP"], "64", resnet["WIDTH_PER_GROUP"] == 64),
            "STEM_OUT_CHANNELS": (resnet["STEM_OUT_CHANNELS"], "64", resnet["STEM_OUT_CHANNELS"] == 64),
            "RES2_OUT_CHANNELS": (resnet["RES2_OUT_CHANNELS"], "256", resnet["RES2_OUT_CHANNELS"] == 256),
            "RES5_DILATION": (resnet["RES5_DILATION"], "1", resnet["RES5_DILATION"] == 1),
            "DEFORM_ON_PER_STAGE": (
                resnet["DEFORM_ON_PER_STAGE"],
                "all False",
                not any(resnet["DEFORM_ON_PER_STAGE"]),
            ),
        }
        problems = [f"{key} = {value} (needs {needed})" for key, (value, needed, ok) in unsupported.items() if not ok]
        _require(not problems, f"Unsupported MODEL.RESNETS settings: {'; '.join(problems)}.")
        config = ResNetConfig(
            depths=_RESNET_DEPTHS[resnet["DEPTH"]],
            downsample_in_bottleneck=resnet["STRIDE_IN_1X1"],  # stride in the first 1x1 conv
            out_features=out_features,
        )
        return config, "r50" if resnet["DEPTH"] == 50 and not resnet["STRIDE_IN_1X1"] else None
    raise ValueError(
        f"Unsupported MODEL.BACKBONE.NAME {name!r}: PEM converts `build_resnet_backbone` and `D2STDCnet`."
    )


def _dataset_from_official(config: dict) -> str:
    test_sets = config["DATASETS"]["TEST"]
    name = test_sets[0] if test_sets else ""
    for dataset in DATASET_LABELS:
        if name.startswith(dataset):
            return dataset
    raise ValueError(
        f"Cannot tell the label set from DATASETS.TEST = {test_sets}: the converter knows {sorted(DATASET_LABELS)} "
        "(dataset names starting with one of these). For another dataset, save a PEMConfig with your id2label and "
        "pass its directory as --config."
    )


def config_from_official(official: dict, source: str = "official yaml") -> ConversionTarget:
    """Build the `PEMConfig` and image processor of an official config (as returned by `load_official_config`).

    Settings PEM cannot represent (another meta-architecture, pixel decoder or transformer decoder, BGR input,
    unsupported backbone options) raise a `ValueError`.
    """
    model, mask_former = official["MODEL"], official["MODEL"]["MASK_FORMER"]
    head, test = official["MODEL"]["SEM_SEG_HEAD"], official["MODEL"]["MASK_FORMER"]["TEST"]
    expected = {
        "MODEL.META_ARCHITECTURE": (model["META_ARCHITECTURE"], "MaskFormer"),
        "MODEL.SEM_SEG_HEAD.NAME": (head["NAME"], "MaskFormerHead"),
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": (head["PIXEL_DECODER_NAME"], "PEM_Pixel_Decoder"),
        "MODEL.SEM_SEG_HEAD.IN_FEATURES": (head["IN_FEATURES"], ["res2", "res3", "res4", "res5"]),
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": (head["COMMON_STRIDE"], 4),
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": (
            mask_former["TRANSFORMER_DECODER_NAME"],
            "MultiScaleMaskedTransformerDecoder",
        ),
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": (
            mask_former["TRANSFORMER_IN_FEATURE"],
            "multi_scale_pixel_decoder",
        ),
        "INPUT.FORMAT": (official["INPUT"]["FORMAT"], "RGB"),
    }
    problems = [
        f"{key} = {value!r} (PEM needs {needed!r})" for key, (value, needed) in expected.items() if value != needed
    ]
    _require(not problems, f"This is not a PEM configuration the converter supports: {'; '.join(problems)}.")

    if mask_former["DROPOUT"]:
        logger.warning(
            "MODEL.MASK_FORMER.DROPOUT = %s is ignored: PEM's decoder has no dropout.", mask_former["DROPOUT"]
        )
    backbone_config, backbone_name = _backbone_from_official(model)
    dataset = _dataset_from_official(official)
    task = "panoptic" if test["PANOPTIC_ON"] else "semantic"
    num_labels = len(DATASET_LABELS[dataset])
    _require(
        head["NUM_CLASSES"] == num_labels,
        f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {head['NUM_CLASSES']}, but {dataset} ({official['DATASETS']['TEST']}) "
        f"has {num_labels} classes.",
    )
    label_preset = f"pem-{backbone_name or 'r50'}-{dataset}-{task}"  # labels and processor depend on dataset and task
    config = PEMConfig.from_preset(
        label_preset,
        backbone_config=backbone_config,
        conv_dim=head["CONVS_DIM"],
        mask_dim=head["MASK_DIM"],
        ignore_value=head["IGNORE_VALUE"],
        hidden_dim=mask_former["HIDDEN_DIM"],
        num_queries=mask_former["NUM_OBJECT_QUERIES"],
        num_attention_heads=mask_former["NHEADS"],
        dim_feedforward=mask_former["DIM_FEEDFORWARD"],
        decoder_layers=mask_former["DEC_LAYERS"] - 1,  # the official count includes the learnable-query prediction
        pre_norm=mask_former["PRE_NORM"],
        enforce_input_projection=mask_former["ENFORCE_INPUT_PROJ"],
        no_object_weight=mask_former["NO_OBJECT_WEIGHT"],
        class_weight=mask_former["CLASS_WEIGHT"],
        mask_weight=mask_former["MASK_WEIGHT"],
        dice_weight=mask_former["DICE_WEIGHT"],
        train_num_points=mask_former["TRAIN_NUM_POINTS"],
        oversample_ratio=mask_former["OVERSAMPLE_RATIO"],
        importance_sample_ratio=mask_former["IMPORTANCE_SAMPLE_RATIO"],
        use_auxiliary_loss=mask_former["DEEP_SUPERVISION"],
        object_mask_threshold=test["OBJECT_MASK_THRESHOLD"],
        overlap_threshold=test["OVERLAP_THRESHOLD"],
        test_topk_per_image=official["TEST"]["DETECTIONS_PER_IMAGE"],
    )

    processor_settings = {
        "size": {
            "shortest_edge": official["INPUT"]["MIN_SIZE_TEST"],
            "longest_edge": official["INPUT"]["MAX_SIZE_TEST"],
        },
        "resize_masks_before_semantic_inference": bool(
            test["PANOPTIC_ON"] or test["INSTANCE_ON"] or test["SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE"]
        ),
        "test_topk_per_image": official["TEST"]["DETECTIONS_PER_IMAGE"],
        "size_divisor": mask_former["SIZE_DIVISIBILITY"],
    }
    image_processor = PEMImageProcessor.from_preset(label_preset, **processor_settings)
    mean, std = [value / 255 for value in model["PIXEL_MEAN"]], [value / 255 for value in model["PIXEL_STD"]]
    preset_normalisation = list(image_processor.image_mean) + list(image_processor.image_std)
    if not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(mean + std, preset_normalisation)):
        image_processor = PEMImageProcessor.from_preset(
            label_preset, **processor_settings, image_mean=mean, image_std=std
        )

    official_preset = label_preset if backbone_name is not None else None
    if official_preset is not None and config.to_dict() != PEMConfig.from_preset(official_preset).to_dict():
        official_preset = None
    return ConversionTarget(config=config, image_processor=image_processor, preset=official_preset, source=source)


def resolve_config(config: str | Path) -> ConversionTarget:
    """Resolve a `--config` value: a preset name (`PEMConfig.presets()`), an official yaml file, or a directory (or
    `config.json`) with a saved `PEMConfig` for custom architectures (its processor is used if the directory has a
    `preprocessor_config.json`)."""
    if str(config) in PEMConfig.presets():
        name = str(config)
        return ConversionTarget(
            PEMConfig.from_preset(name), PEMImageProcessor.from_preset(name), preset=name, source=f"preset {name}"
        )
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        return config_from_official(load_official_config(path), source=f"official config {path.name}")
    if path.is_dir() or path.suffix == ".json":
        directory = path if path.is_dir() else path.parent
        pem_config = PEMConfig.from_pretrained(path) if path.is_dir() else PEMConfig.from_json_file(path)
        image_processor = None
        if (directory / "preprocessor_config.json").is_file():
            image_processor = PEMImageProcessor.from_pretrained(directory)
        return ConversionTarget(pem_config, image_processor, preset=None, source=f"custom config {path.name}")
    raise ValueError(
        f"--config {str(config)!r} is neither a preset ({', '.join(PEMConfig.presets())}), nor a .yaml file, nor a "
        "directory / config.json with a saved PEMConfig."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Checked loading
# ---------------------------------------------------------------------------------------------------------------------


def _format_keys(keys: list[str], limit: int = 30) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def check_state_dict(
    expected: dict[str, Tensor], state_dict: dict[str, Tensor], unmapped: list[str] = (), source: str = "checkpoint"
) -> None:
    """Check that `state_dict` provides every tensor of `expected` (a module's state dict) with the right shape and
    nothing else; otherwise raise a `ValueError` listing the unmapped, missing, unexpected and mis-shaped keys."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (checkpoint {tuple(tensor.shape)}, model {tuple(expected[key].shape)})"
        for key, tensor in state_dict.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    problems = [
        (f"{len(keys)} {kind}", keys)
        for kind, keys in (
            ("keys no conversion rule knows", list(unmapped)),
            ("model keys the checkpoint does not provide", missing),
            ("converted keys the model does not have", unexpected),
            ("keys with mismatched shapes", mismatched),
        )
        if keys
    ]
    if problems:
        details = "\n".join(f"- {title}: {_format_keys(keys)}" for title, keys in problems)
        raise ValueError(
            f"{source} does not match the model configuration:\n{details}\nCheck that --config describes the model "
            "this checkpoint was trained with (backbone, number of classes, head sizes)."
        )


def load_state_dict_checked(
    module: nn.Module, state_dict: dict[str, Tensor], unmapped: list[str] = (), source: str = "checkpoint"
) -> None:
    """`check_state_dict` against `module`, then load strictly."""
    check_state_dict(module.state_dict(), state_dict, unmapped, source)
    module.load_state_dict(state_dict, strict=True)


def load_official_checkpoint(model: PEMForUniversalSegmentation, path: str | Path) -> None:
    """Load an official PEM checkpoint (detectron2 `.pth` / `.pkl`, or `.safetensors` with official key names) into
    `model`, refusing anything that does not map exactly."""
    state_dict, unmapped = convert_official_state_dict(load_checkpoint(path))
    load_state_dict_checked(model, state_dict, unmapped, source=f"Checkpoint {str(path)!r}")


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights into the backbone of a PEM model (or into a backbone module itself).

    Accepted formats, recognised from the key names (a DataParallel `module.` or detectron2 `backbone.` prefix on
    every key is removed; ImageNet classifier keys are ignored):

    - STDC (`STDCBackbone`): the STDC-Seg ImageNet checkpoints `STDCNet813M_73.91.tar` / `STDCNet1446_76.47.tar`
      (`{"state_dict": ...}` with `features.*`, alias `x{2..32}.*`, `conv_last.*` and classifier `fc`/`bn`/`linear`)
      and their detectron2 `.pkl` conversions (the official `tools/convert-pretrained-stdc-model-to-d2.py`).
      `conv_last` is used only if the backbone has one (`use_conv_last=True`).
    - ResNet (`ResNetBackbone`): torchvision / timm `resnet50` state dicts (`conv1`, `bn1`, `layer1..4`), detectron2
      `.pkl` files (`stem.*`, `res2..5.*`, e.g. `R-50.pkl`), or transformers `ResNetBackbone` /
      `ResNetForImageClassification` weights.
    - `TimmBackbone`: the state dict of the same timm model.
    """
    if isinstance(model, PEMForUniversalSegmentation):
        model = model.model
    backbone = model.pixel_level_module.encoder if isinstance(model, PEMModel) else model
    state_dict = load_checkpoint(path)
    for prefix in ("module.", "backbone."):
        state_dict = _strip_common_prefix(state_dict, prefix)

    if isinstance(backbone, TimmBackbone):
        converted = {
            f"_backbone.{key}": tensor for key, tensor in state_dict.items() if not _CLASSIFIER_KEY.match(key)
        }
        unmapped = []
    elif isinstance(backbone, STDCBackbone | ResNetBackbone):
        transformers_resnet = {  # ResNetBackbone, or ResNetForImageClassification's `resnet.*`
            key.removeprefix("resnet."): tensor for key, tensor in state_dict.items() if not _CLASSIFIER_KEY.match(key)
        }
        if isinstance(backbone, ResNetBackbone) and any(key.startswith("embedder.") for key in transformers_resnet):
            converted = {ENCODER_PREFIX + key: tensor for key, tensor in transformers_resnet.items()}
            unmapped = []
        else:
            official = {}
            for key, tensor in state_dict.items():
                if isinstance(backbone, ResNetBackbone) and re.match(r"^(conv1|bn1|layer[1-4])\.", key):
                    key = torchvision_to_detectron2_key(key)
                # STDC ImageNet checkpoints carry the classifier's `conv_last`, used only with `use_conv_last=True`.
                unused_conv_last = key.startswith("conv_last.") and getattr(backbone, "conv_last", None) is None
                if _CLASSIFIER_KEY.match(key) or unused_conv_last:
                    continue
                official[f"backbone.{key}"] = tensor
            converted, unmapped = convert_official_state_dict(official)
        converted = {key.removeprefix(ENCODER_PREFIX): tensor for key, tensor in converted.items()}
        unmapped = [key.removeprefix("backbone.") for key in unmapped]
    else:
        raise ValueError(
            "load_backbone_weights supports STDCBackbone, ResNetBackbone and TimmBackbone, not "
            f"{type(backbone).__name__}."
        )
    load_state_dict_checked(backbone, converted, unmapped, source=f"Backbone weights {str(path)!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Output: save_pretrained directory, model card, Hub upload
# ---------------------------------------------------------------------------------------------------------------------

CITATION = """@inproceedings{cavagnero2024pem,
  title={PEM: Prototype-based Efficient MaskFormer for Image Segmentation},
  author={Cavagnero, Niccol{\\`o} and Rosi, Gabriele and Cuttano, Claudia and Pistilli, Francesca and Ciccone, Marco
          and Averta, Giuseppe and Cermelli, Fabio},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={15804--15813},
  year={2024}
}"""

_DATASET_NAMES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K"}


def _dataset_of(config: PEMConfig) -> str | None:
    labels = [config.id2label[index] for index in range(config.num_labels)]
    return next((name for name, dataset in DATASET_LABELS.items() if [label[0] for label in dataset] == labels), None)


def model_card(
    target: ConversionTarget, model: PEMForUniversalSegmentation, weights: str, trained: bool, repo_id: str
) -> str:
    """The README.md of a converted checkpoint: what it is, the paper's result for its configuration, usage, citation.

    `weights` describes where the weights came from; `trained` is False for a model with only ImageNet backbone
    weights; `repo_id` is the name used in the usage snippet (Hub repository or local directory)."""
    config = target.config
    dataset = _dataset_of(config)
    backbone = type(config.backbone_config).__name__.removesuffix("Config")
    if isinstance(config.backbone_config, STDCConfig):
        backbone = {(2, 2, 2): "STDC1", (4, 5, 3): "STDC2"}.get(tuple(config.backbone_config.layers), "STDC")
    elif isinstance(config.backbone_config, ResNetConfig):
        backbone = f"ResNet-{3 * sum(config.backbone_config.depths) + 2}"  # bottleneck blocks: 3 convs each
    task = target.preset.split("-")[-1] if target.preset else None
    title = f"PEM-{backbone}" + (f" ({_DATASET_NAMES[dataset]}{f', {task}' if task else ''})" if dataset else "")
    if not trained:
        result = "None: only the backbone is pretrained (ImageNet); fine-tune the model before using it."
    elif target.preset in PAPER_RESULTS:
        result = (
            f"{PAPER_RESULTS[target.preset]}: the paper's result for the official `{target.preset}` configuration."
        )
    elif target.preset:
        result = f"The paper reports no result for `{target.preset}`."
    else:
        result = "Custom configuration: the paper reports no result for it."
    post_process = "post_process_panoptic_segmentation" if task == "panoptic" else "post_process_semantic_segmentation"
    num_parameters = model.num_parameters() / 1e6
    front_matter = "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: image-segmentation",
            "tags:",
            "- pem",
            "- image-segmentation",
        ]
        + ([f"- {dataset}"] if dataset else [])
        + ["---"]
    )
    return f"""{front_matter}

# {title}

PEM (Prototype-based Efficient MaskFormer, Cavagnero et al., CVPR 2024, [arXiv 2402.19422](https://arxiv.org/abs/2402.19422))
for [transformers](https://github.com/huggingface/transformers) through the `transformers-pem` package: a
{backbone} backbone, PEM's efficient pixel decoder and a transformer decoder with prototype-based masked
cross-attention; {config.num_labels} classes{f" ({_DATASET_NAMES[dataset]})" if dataset else ""},
{config.num_queries} queries, {num_parameters:.1f} M parameters.

- **Weights:** {weights}, converted with `python -m transformers_pem.convert` (every key mapped and checked).
- **Configuration:** {target.source}.
- **Result:** {result}

## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

import transformers_pem  # registers PEM with the Auto classes

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = AutoModelForUniversalSegmentation.from_pretrained("{repo_id}").eval()

image = Image.open("image.png").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
result = processor.{post_process}(outputs, target_sizes=[image.size[::-1]])[0]
```

## Citation

```bibtex
{CITATION}
```
"""


def convert(
    config: str | Path,
    output_dir: str | Path,
    checkpoint: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    push_to_hub: str | None = None,
) -> PEMForUniversalSegmentation:
    """Convert an official checkpoint (or build a model with ImageNet backbone weights) and write a
    `save_pretrained` directory: `config.json` (with id2label / label2id), `model.safetensors`,
    `preprocessor_config.json` and a model card `README.md`. With `push_to_hub`, upload it to that Hub repository."""
    if (checkpoint is None) == (backbone_weights is None):
        raise ValueError("Pass exactly one of `checkpoint` (an official PEM model) and `backbone_weights` (ImageNet).")
    target = resolve_config(config)
    model = PEMForUniversalSegmentation(target.config).eval()
    if checkpoint is not None:
        load_official_checkpoint(model, checkpoint)
        weights = f"official PEM checkpoint `{Path(checkpoint).name}`"
    else:
        load_backbone_weights(model, backbone_weights)
        weights = f"ImageNet backbone weights `{Path(backbone_weights).name}` and a randomly initialised head"

    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if target.image_processor is not None:
        target.image_processor.save_pretrained(output_dir)
    else:
        logger.warning("No image processor settings for %s: %s has no preprocessor_config.json.", config, output_dir)
    card = model_card(target, model, weights, trained=checkpoint is not None, repo_id=push_to_hub or str(output_dir))
    (output_dir / "README.md").write_text(card)
    if push_to_hub:
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=output_dir, commit_message=f"Add {output_dir.name}")
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m transformers_pem.convert",
        description="Convert an official PEM checkpoint (detectron2) into a transformers `save_pretrained` directory, "
        "or build a PEM with ImageNet backbone weights to train from.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Official PEM checkpoint: detectron2 .pth / .pkl, or .safetensors.")
    source.add_argument(
        "--backbone-weights",
        help="ImageNet backbone weights instead: STDC-Seg STDCNet813M_73.91.tar / STDCNet1446_76.47.tar or their "
        "detectron2 .pkl, torchvision / timm resnet50, detectron2 R-50.pkl.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="Official yaml (configs/<dataset>/<task>-segmentation/pem_*.yaml), a preset "
        f"({', '.join(PEMConfig.presets())}), or a directory with a saved PEMConfig (config.json, optionally "
        "preprocessor_config.json).",
    )
    parser.add_argument("--output-dir", required=True, help="Directory to write the converted model to.")
    parser.add_argument("--push-to-hub", metavar="REPO", help="Also upload the directory to this Hub repository.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        model = convert(args.config, args.output_dir, args.checkpoint, args.backbone_weights, args.push_to_hub)
    except ValueError as error:
        parser.exit(1, f"error: {error}\n")
    print(f"Wrote {args.output_dir} ({model.num_parameters():,} parameters).", file=sys.stderr)


if __name__ == "__main__":
    main()
