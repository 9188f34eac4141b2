"""Reading PEM weights safely and mapping their names: official PEM checkpoints (detectron2) and ImageNet backbone
checkpoints, loaded without executing code from them, every key mapped and checked.

Checkpoints are read with `torch.load(weights_only=True)` (`.pth`/`.pt`/`.bin`/`.tar`), with an unpickler that only
rebuilds numpy arrays and torch tensors (detectron2 `.pkl`), or with safetensors. Every official key is mapped (or,
for the STDC `backbone.x{2..32}.*` aliases, checked to equal the tensor it duplicates); anything unmapped, missing
or mis-shaped raises a `ValueError` listing the offending keys.
"""

import codecs
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import ResNetBackbone
from transformers.models.timm_backbone import TimmBackbone

from ..modeling_pem import PEMForUniversalSegmentation, PEMModel
from ..modeling_stdc import STDCBackbone

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
    if path.stat().st_size == 0:
        raise ValueError(f"Checkpoint {str(path)!r} is empty (0 bytes): download or copy it again.")
    unreadable = (
        f"Checkpoint {str(path)!r} is not a readable {path.suffix or 'torch'} file (truncated, corrupt or another "
        "format): download or copy it again, or check that its extension matches its format."
    )
    try:
        if path.suffix == ".safetensors":
            checkpoint = load_file(path)
        elif path.suffix in (".pkl", ".pickle") and not zipfile.is_zipfile(path):
            with open(path, "rb") as file:
                checkpoint = _WeightsUnpickler(file, encoding="latin1").load()
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # A file that names Python objects beyond arrays and tensors is refused; any other unpickling error means
        # the bytes are not a pickle at all.
        if "forbidden global" in str(error):
            raise ValueError(
                f"Refusing to load {str(path)!r}: {error}. A detectron2 weights file holds only numpy arrays or "
                "tensors; this one references other Python objects, which could execute code. Convert the "
                "checkpoint from its original `.pth` instead."
            ) from error
        if "global" in str(error).lower():
            raise ValueError(
                f"Refusing to load {str(path)!r} with `torch.load(weights_only=True)`: it contains Python objects "
                f"other than tensors ({error}). If you trust the file, extract its weights first, e.g. "
                "`torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')`, and convert that."
            ) from error
        raise ValueError(f"{unreadable} ({error})") from error
    except (EOFError, OSError, RuntimeError, IndexError, KeyError, ValueError, SafetensorError) as error:
        raise ValueError(f"{unreadable} ({type(error).__name__}: {error})") from error

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
