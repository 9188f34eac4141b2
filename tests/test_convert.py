"""Tests of the official-checkpoint converter (conversion.convert, conversion.checkpoint_io, pem convert).

Fixtures: tests/fixtures/convert (the official yaml configs and the key/shape manifests of the 12 official full-size
models, see its README) and tests/fixtures/parity (official state dicts and outputs of tiny models, made by the
official code). Tolerances for model outputs are those of tests/test_parity.py: |diff| <= 1e-3 * max(1, max|ref|).
"""

import inspect
import json
import lzma
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file
from tiny_configs import PARITY_HEAD
from transformers import ResNetBackbone, ResNetConfig, ResNetForImageClassification, TimmBackboneConfig

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, STDCBackbone, STDCConfig
from transformers_pem.cli.convert import main
from transformers_pem.conversion import convert as conversion
from transformers_pem.conversion.checkpoint_io import (
    check_state_dict,
    convert_official_state_dict,
    load_backbone_weights,
    load_checkpoint,
    load_official_checkpoint,
    load_state_dict_checked,
    stdc_alias_map,
)
from transformers_pem.conversion.convert import load_official_config, resolve_config
from transformers_pem.deploy import hub
from transformers_pem.image_processing_pem import PEMImageProcessor

ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "convert"
PARITY = Path(__file__).parent / "fixtures" / "parity"
with lzma.open(FIXTURES / "manifests.json.xz", "rt") as file:
    MANIFESTS = json.load(file)


def preset_of(manifest_name: str) -> str:
    dataset, task, backbone = manifest_name.split("_")
    return f"pem-{backbone.lower()}-{dataset}-{task}"


def flatten(config: dict, prefix: str = "") -> dict:
    """Dotted keys of a nested config; the manifests store `INPUT.MIN_SIZE_TRAIN` as {"expression", "value"}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and set(value) != {"expression", "value"}:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value["value"] if isinstance(value, dict) else value
    return flat


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    tolerance = 1e-3 * max(1.0, reference.abs().max().item())
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    difference = (actual - reference).abs().max().item()
    assert difference <= tolerance, f"{name}: max |diff| {difference:.3g} > {tolerance:.3g}"


def check_official_predictions(case: str, class_logits: list[torch.Tensor], mask_logits: list[torch.Tensor]) -> None:
    """`class_logits` / `mask_logits`: the learnable-query prediction, then one per decoder layer (official order)."""
    reference = load_file(PARITY / case / "outputs.safetensors")
    names = [f"aux_outputs.{i}." for i in range(len(class_logits) - 1)] + [""]
    for prefix, classes, masks in zip(names, class_logits, mask_logits, strict=True):
        assert_close_to_reference(classes, reference[f"{prefix}pred_logits"], f"{case} {prefix}pred_logits")
        assert_close_to_reference(masks, reference[f"{prefix}pred_masks"], f"{case} {prefix}pred_masks")


# ---------------------------------------------------------------------------------------------------------------------
# Official configs and the 12 full-size manifests
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_official_yaml_resolves_like_the_official_build(name, caplog):
    """Our reading of the yaml chain (+ detectron2/PEM defaults) gives every value the official build resolved, and the
    resulting PEMConfig and image processor are the preset's."""
    manifest = MANIFESTS[name]
    official = load_official_config(FIXTURES / manifest["config_file"])
    ours = flatten(official)
    reference = flatten(
        {k: v for k, v in manifest["resolved_config"].items() if k not in ("num_classes", "backbone_norm_effective")}
    )
    differences = {
        key: (ours.get(key, "<missing>"), value)
        for key, value in reference.items()
        if ours.get(key, "<missing>") != value
    }
    assert differences == {}
    # The ADE20K STDC yamls name a base file that does not exist; the official build used the sibling 160k config.
    assert (manifest["base_fix"] is not None) == ("does not exist" in caplog.text)

    target = resolve_config(FIXTURES / manifest["config_file"])
    preset = preset_of(name)
    assert target.preset == preset
    assert target.config.to_dict() == PEMConfig.from_preset(preset).to_dict()
    assert target.image_processor.to_dict() == PEMImageProcessor.from_preset(preset).to_dict()
    assert target.config.num_labels == manifest["resolved_config"]["num_classes"]
    built = manifest["built_model"]
    assert target.config.decoder_layers == built["decoder_layers_built"]
    assert target.config.num_queries == built["num_queries"]
    assert (
        target.image_processor.resize_masks_before_semantic_inference == built["sem_seg_postprocess_before_inference"]
    )
    resolved_input = manifest["resolved_config"]["INPUT"]
    assert target.image_processor.size.shortest_edge == resolved_input["MIN_SIZE_TEST"]
    assert target.image_processor.size.longest_edge == resolved_input["MAX_SIZE_TEST"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_manifest_converts_exactly(name):
    """A state dict with the official keys and shapes (aliases included) converts with no unmapped key and loads
    strictly, and the model has the official parameter count."""
    manifest = MANIFESTS[name]
    official = {
        key: torch.zeros(shape, dtype=getattr(torch, dtype)) for key, (shape, dtype) in manifest["state_dict"].items()
    }
    assert stdc_alias_map(list(official)) == manifest["stdc_alias_map"]
    converted, unmapped = convert_official_state_dict(official)
    assert unmapped == []
    with torch.device("meta"):  # shapes only: no initialisation
        model = PEMForUniversalSegmentation(resolve_config(FIXTURES / manifest["config_file"]).config)
    check_state_dict(model.state_dict(), converted)  # raises on any missing / unexpected / mis-shaped key

    # detectron2's FrozenBN (ADE20K R50) holds weight and bias as buffers: the official parameter count leaves them
    # out, our BatchNorm counts them. Its 4 buffers have no `num_batches_tracked`; the converter adds one per norm.
    keys = manifest["state_dict"]
    frozen_norms = [
        key.removesuffix(".running_var")
        for key in keys
        if key.startswith("backbone.")
        and key.endswith(".running_var")
        and key.replace(".running_var", ".num_batches_tracked") not in keys
    ]
    assert (len(frozen_norms) > 0) == (manifest["resolved_config"]["backbone_norm_effective"] == "FrozenBN")
    frozen_affine = sum(
        torch.Size(keys[f"{norm}.{p}"][0]).numel() for norm in frozen_norms for p in ("weight", "bias")
    )
    counts = manifest["parameter_counts"]
    assert model.num_parameters() == counts["total"] + frozen_affine
    assert sum(t.numel() for t in model.state_dict().values()) == counts["state_dict_numel_unique"] + len(frozen_norms)
    assert len(model.state_dict()) == counts["num_state_dict_keys"] - counts["num_alias_keys"] + len(frozen_norms)


def test_yaml_python_expression_is_computed_not_evaluated(tmp_path):
    official = load_official_config(FIXTURES / "configs/ade20k/panoptic-segmentation/pem_R50_bs32_160k.yaml")
    assert official["INPUT"]["MIN_SIZE_TRAIN"] == [int(x * 0.1 * 640) for x in range(5, 21)]
    assert official["INPUT"]["CROP"]["SIZE"] == [640, 640]  # "(640, 640)" decoded as detectron2 does

    marker = tmp_path / "marker"
    for value in (
        f"!!python/object/apply:eval [\"__import__('os').system('touch {marker}')\"]",
        f'!!python/object/apply:os.system ["touch {marker}"]',
    ):
        path = tmp_path / "evil.yaml"
        path.write_text(f"INPUT:\n  MIN_SIZE_TRAIN: {value}\n")
        with pytest.raises(ValueError, match="eval|SafeLoader"):
            load_official_config(path)
    assert not marker.exists()


def test_missing_base_is_reported(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("_BASE_: Base-Missing.yaml\nMODEL:\n  META_ARCHITECTURE: MaskFormer\n")
    with pytest.raises(ValueError, match=r"Base-Missing\.yaml.*does not exist"):
        load_official_config(path)


def test_unsupported_configs_are_refused(tmp_path):
    base = FIXTURES / "configs/cityscapes/semantic-segmentation/pem_R50_bs32_90k.yaml"
    for override, message in (
        ("INPUT:\n  FORMAT: BGR\n", "INPUT.FORMAT"),
        ("MODEL:\n  SEM_SEG_HEAD:\n    PIXEL_DECODER_NAME: MSDeformAttnPixelDecoder\n", "PIXEL_DECODER_NAME"),
        ("MODEL:\n  RESNETS:\n    RES5_DILATION: 2\n", "RES5_DILATION"),
        ("MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 20\n", "NUM_CLASSES = 20"),
        ("DATASETS:\n  TEST: ('coco_2017_val_panoptic',)\n", "coco_2017_val_panoptic"),
    ):
        path = tmp_path / "config.yaml"
        path.write_text(f"_BASE_: {base}\n{override}")
        with pytest.raises(ValueError, match=message):
            resolve_config(path)
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_config("pem-r18-cityscapes-semantic")


# ---------------------------------------------------------------------------------------------------------------------
# Reading checkpoints safely
# ---------------------------------------------------------------------------------------------------------------------


class ExecutesCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_formats(tmp_path):
    weights = OrderedDict(a=torch.randn(2, 3), b=torch.arange(4), n=torch.tensor(1))

    torch.save({"model": weights, "iteration": 89999, "optimizer": {"state": {}}}, tmp_path / "model_final.pth")
    torch.save(weights, tmp_path / "bare.pth")
    # STDC-Seg era (PyTorch 1.1) checkpoints use the legacy, non-zip serialization
    torch.save(
        {"epoch": 300, "state_dict": weights}, tmp_path / "STDCNet813M_73.91.tar", _use_new_zipfile_serialization=False
    )
    save_file(dict(weights), tmp_path / "model.safetensors")
    # detectron2 .pkl with numpy arrays (convert-torchvision-to-d2), with pickle protocols 2 and 5
    arrays = {key: value.numpy() for key, value in weights.items()}
    for protocol in (2, 5):
        with open(tmp_path / f"numpy_{protocol}.pkl", "wb") as file:
            pickle.dump({"model": arrays, "__author__": "torchvision", "matching_heuristics": True}, file, protocol)
    # .pkl with torch tensors pickled directly (the official convert-pretrained-stdc-model-to-d2.py does this)
    with open(tmp_path / "tensors.pkl", "wb") as file:
        pickle.dump({"model": weights, "__author__": "third_party", "matching_heuristics": True}, file)

    for name in (
        "model_final.pth",
        "bare.pth",
        "STDCNet813M_73.91.tar",
        "model.safetensors",
        "numpy_2.pkl",
        "numpy_5.pkl",
        "tensors.pkl",
    ):
        loaded = load_checkpoint(tmp_path / name)
        assert sorted(loaded) == sorted(weights), name  # safetensors sorts its keys
        for key, tensor in weights.items():
            assert torch.equal(loaded[key], tensor), (name, key)
            assert loaded[key].dtype == tensor.dtype, (name, key)


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "marker"
    payload = {"model": {"weight": np.zeros(3, dtype=np.float32)}, "__author__": ExecutesCode(marker)}
    with open(tmp_path / "evil.pkl", "wb") as file:
        pickle.dump(payload, file)
    with pytest.raises(ValueError, match=r"Refusing to load .*forbidden global `(posix|os|nt)\.system`"):
        load_checkpoint(tmp_path / "evil.pkl")

    torch.save({"model": {"weight": torch.zeros(3)}, "extra": ExecutesCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()

    with open(tmp_path / "object.pkl", "wb") as file:
        pickle.dump({"model": {"weight": np.array([None], dtype=object)}}, file)
    with pytest.raises(ValueError, match="'weight' is a ndarray, not a tensor"):
        load_checkpoint(tmp_path / "object.pkl")


# ---------------------------------------------------------------------------------------------------------------------
# Refusing checkpoints that do not map exactly
# ---------------------------------------------------------------------------------------------------------------------


def tiny_stdc_config(case: str = "stdc1_tiny_semantic") -> PEMConfig:
    layers = [2, 2, 2] if case.startswith("stdc1") else [4, 5, 3]
    return PEMConfig.from_preset(
        "pem-stdc1-cityscapes-semantic", backbone_config=STDCConfig(base_channels=16, layers=layers), **PARITY_HEAD
    )


def official_stdc1_tiny_state_dict() -> dict[str, torch.Tensor]:
    """Parity case 1 as an official checkpoint has it: with the STDC alias keys (left out of the fixture file)."""
    state_dict = load_file(PARITY / "stdc1_tiny_semantic" / "weights.safetensors")
    for alias, canonical in MANIFESTS["cityscapes_semantic_STDC1"]["stdc_alias_map"].items():
        state_dict[alias] = state_dict[canonical].clone()
    assert sorted(state_dict) == sorted(MANIFESTS["cityscapes_semantic_STDC1"]["state_dict"])
    return state_dict


def test_offending_keys_are_listed(tmp_path):
    model = PEMForUniversalSegmentation(tiny_stdc_config())
    official = official_stdc1_tiny_state_dict()

    official["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    del official["sem_seg_head.predictor.query_feat.weight"]
    official["sem_seg_head.predictor.class_embed.bias"] = torch.zeros(151)
    official["backbone.res2.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)  # a ResNet key in an STDC checkpoint
    save_file(official, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as error:
        load_official_checkpoint(model, tmp_path / "bad.safetensors")
    message = str(error.value)
    assert "1 keys no conversion rule knows: sem_seg_head.predictor.extra_head.weight" in message
    assert "1 model keys the checkpoint does not provide: model.transformer_module.queries_features.weight" in message
    assert "converted keys the model does not have: model.pixel_level_module.encoder.encoder.stages.0" in message
    assert "class_predictor.bias (checkpoint (151,), model (20,))" in message


def test_aliases_must_equal_the_features_they_duplicate():
    official = official_stdc1_tiny_state_dict()
    official["backbone.x8.0.3.conv_list.1.conv.weight"] = official["backbone.x8.0.3.conv_list.1.conv.weight"] + 1
    with pytest.raises(ValueError, match=r"backbone\.x8\.0\.3\.conv_list\.1\.conv\.weight != backbone\.features\.3\."):
        convert_official_state_dict(official)


# ---------------------------------------------------------------------------------------------------------------------
# ResNet-50: torchvision -> detectron2 names -> ours
# ---------------------------------------------------------------------------------------------------------------------


def torchvision_to_detectron2(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The renaming of detectron2's tools/convert-torchvision-to-d2.py (also in the official PEM repository), written
    out here as an independent reference."""
    converted = {}
    for key, tensor in state_dict.items():
        if "layer" not in key:
            key = "stem." + key
        for t in (1, 2, 3, 4):
            key = key.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            key = key.replace(f"bn{t}", f"conv{t}.norm")
        key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        converted[key] = tensor.detach().numpy()
    return converted


@pytest.fixture(scope="module")
def torchvision_resnet50():
    """torchvision's resnet50 with random weights and random BatchNorm statistics (so that no norm is an identity)."""
    generator = torch.Generator().manual_seed(0)
    model = torchvision.models.resnet50().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


@pytest.fixture(scope="module")
def torchvision_reference(torchvision_resnet50) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An input and torchvision's layer1..layer4 outputs for it."""
    model = torchvision_resnet50
    pixel_values = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden_states = model.maxpool(model.relu(model.bn1(model.conv1(pixel_values))))
        features = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            hidden_states = layer(hidden_states)
            features.append(hidden_states)
    return pixel_values, features


def assert_same_features(backbone: torch.nn.Module, reference: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    pixel_values, expected_features = reference
    with torch.no_grad():
        features = backbone.eval()(pixel_values).feature_maps
    assert len(features) == 4
    for level, (actual, expected) in enumerate(zip(features, expected_features, strict=True)):
        assert_close_to_reference(actual, expected, f"res{level + 2}")


@pytest.mark.parametrize("frozen_batch_norm", [False, True])
def test_detectron2_resnet50_gives_torchvision_features(
    torchvision_resnet50, torchvision_reference, frozen_batch_norm
):
    official = {
        f"backbone.{k}": torch.from_numpy(v)
        for k, v in torchvision_to_detectron2(torchvision_resnet50.state_dict()).items()
    }
    del official["backbone.stem.fc.weight"], official["backbone.stem.fc.bias"]
    if frozen_batch_norm:  # detectron2's FrozenBN, as in the ADE20K R50 configs: no num_batches_tracked
        official = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    converted, unmapped = convert_official_state_dict(official)
    assert unmapped == []
    backbone = ResNetBackbone(ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]))
    prefix = "model.pixel_level_module.encoder."
    load_state_dict_checked(backbone, {k.removeprefix(prefix): v for k, v in converted.items()})
    assert_same_features(backbone, torchvision_reference)


# ---------------------------------------------------------------------------------------------------------------------
# ImageNet backbone weights
# ---------------------------------------------------------------------------------------------------------------------


def test_resnet_imagenet_weights_in_every_format(tmp_path, torchvision_resnet50, torchvision_reference):
    state_dict = torchvision_resnet50.state_dict()
    torch.save(state_dict, tmp_path / "resnet50-torchvision.pth")  # torchvision and timm use the same names
    with open(tmp_path / "R-50.pkl", "wb") as file:
        pickle.dump({"model": torchvision_to_detectron2(state_dict), "__author__": "torchvision"}, file)
    backbone = ResNetBackbone(ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]))
    for name in ("resnet50-torchvision.pth", "R-50.pkl"):
        with torch.no_grad():  # forget the previous weights
            for tensor in backbone.state_dict().values():
                tensor.zero_()
        load_backbone_weights(backbone, tmp_path / name)
        assert_same_features(backbone, torchvision_reference)

    # transformers ResNetForImageClassification weights: `resnet.*` and the classifier.
    with torch.device("meta"):
        classifier_keys = set(ResNetForImageClassification(ResNetConfig()).state_dict())
    hf_weights = {f"resnet.{key}": tensor.clone() for key, tensor in backbone.state_dict().items()}
    hf_weights.update({"classifier.1.weight": torch.zeros(1000, 2048), "classifier.1.bias": torch.zeros(1000)})
    assert set(hf_weights) == classifier_keys
    save_file(hf_weights, tmp_path / "hf-resnet50.safetensors")
    with torch.no_grad():
        for tensor in backbone.state_dict().values():
            tensor.zero_()
    load_backbone_weights(backbone, tmp_path / "hf-resnet50.safetensors")
    assert_same_features(backbone, torchvision_reference)

    # A timm backbone takes the same file.
    config = PEMConfig.from_preset(
        "pem-r50-cityscapes-semantic",
        backbone_config=TimmBackboneConfig(backbone="resnet50", out_indices=[1, 2, 3, 4]),
        **PARITY_HEAD,
    )
    model = PEMForUniversalSegmentation(config)
    load_backbone_weights(model, tmp_path / "resnet50-torchvision.pth")
    assert_same_features(model.model.pixel_level_module.encoder, torchvision_reference)

    stdc = PEMForUniversalSegmentation(tiny_stdc_config())
    with pytest.raises(ValueError) as error:
        load_backbone_weights(stdc, tmp_path / "R-50.pkl")
    assert "174 model keys the checkpoint does not provide: features.0.conv.weight" in str(error.value)
    assert "318 converted keys the model does not have: embedder.embedder.convolution.weight" in str(error.value)


def stdc_imagenet_checkpoint(layers: list[int], base: int = 16) -> OrderedDict:
    """A randomly initialised stand-in for the STDC-Seg ImageNet checkpoints (`STDCNet813M_73.91.tar`,
    `STDCNet1446_76.47.tar`): the `state_dict` of STDC-Seg's `STDCNet813` / `STDCNet1446` classifier saved from
    DataParallel. Its modules: `features` (the backbone), the stage containers `x2..x32` that register the same
    blocks again, `conv_last` (1x1 ConvX to max(1024, 16 * base)), `fc` (Linear, no bias), `bn` (BatchNorm1d),
    `linear`."""
    generator = torch.Generator().manual_seed(2)
    source = STDCBackbone(STDCConfig(base_channels=base, layers=layers))
    state_dict = OrderedDict()
    for key, tensor in source.state_dict().items():  # features.*
        state_dict[key] = tensor if tensor.dtype == torch.long else torch.randn(tensor.shape, generator=generator)
    stage_blocks = [[0], [1]]
    for num_blocks in layers:
        start = stage_blocks[-1][-1] + 1
        stage_blocks.append(list(range(start, start + num_blocks)))
    for stage, blocks in zip(("x2", "x4", "x8", "x16", "x32"), stage_blocks):
        for block in blocks:
            for key, tensor in list(state_dict.items()):
                if key.startswith(f"features.{block}."):
                    state_dict[f"{stage}.0.{block}.{key.removeprefix(f'features.{block}.')}"] = tensor
    width = max(1024, 16 * base)
    state_dict["conv_last.conv.weight"] = torch.randn(width, 16 * base, 1, 1, generator=generator)
    for name, shape in (("weight", width), ("bias", width), ("running_mean", width), ("running_var", width)):
        state_dict[f"conv_last.bn.{name}"] = torch.rand(shape, generator=generator)
        state_dict[f"bn.{name}"] = torch.rand(shape, generator=generator)
    state_dict["conv_last.bn.num_batches_tracked"] = state_dict["bn.num_batches_tracked"] = torch.tensor(5)
    state_dict["fc.weight"] = torch.randn(width, width, generator=generator)
    state_dict["linear.weight"] = torch.randn(1000, width, generator=generator)
    return OrderedDict((f"module.{key}", tensor) for key, tensor in state_dict.items())


@pytest.mark.parametrize("layers", [[2, 2, 2], [4, 5, 3]])
def test_stdc_imagenet_weights_and_their_detectron2_conversion(tmp_path, layers):
    checkpoint = stdc_imagenet_checkpoint(layers)
    torch.save({"epoch": 250, "best_prec1": 73.91, "state_dict": checkpoint}, tmp_path / "STDCNet.tar")
    # tools/convert-pretrained-stdc-model-to-d2.py: drop the classifier (fc, bn, linear), pickle the torch tensors
    detectron2 = OrderedDict((k, v) for k, v in checkpoint.items() if not re.match(r"^module\.(fc|bn|linear)\.", k))
    with open(tmp_path / "STDC.pkl", "wb") as file:
        pickle.dump({"model": detectron2, "__author__": "third_party", "matching_heuristics": True}, file)

    for use_conv_last in (False, True):
        config = STDCConfig(base_channels=16, layers=layers, use_conv_last=use_conv_last)
        for name in ("STDCNet.tar", "STDC.pkl"):
            model = PEMForUniversalSegmentation(
                PEMConfig.from_preset("pem-stdc1-cityscapes-semantic", backbone_config=config, **PARITY_HEAD)
            )
            load_backbone_weights(model, tmp_path / name)
            loaded = model.model.pixel_level_module.encoder.state_dict()
            expected = {
                key.removeprefix("module."): tensor
                for key, tensor in checkpoint.items()
                if key.startswith("module.features.") or (use_conv_last and key.startswith("module.conv_last."))
            }
            assert sorted(loaded) == sorted(expected)
            for key, tensor in expected.items():
                assert torch.equal(loaded[key], tensor), (name, key)


# ---------------------------------------------------------------------------------------------------------------------
# End to end through the command line: official fixtures -> directory -> from_pretrained -> official outputs
# ---------------------------------------------------------------------------------------------------------------------


def save_custom_config(directory: Path, config: PEMConfig, preset: str) -> Path:
    config.save_pretrained(directory)
    PEMImageProcessor.from_preset(preset).save_pretrained(directory)
    return directory


def predictions(model: PEMForUniversalSegmentation, pixel_values: torch.Tensor):
    with torch.no_grad():
        outputs = model(pixel_values, output_auxiliary_logits=True)
    auxiliary = outputs.auxiliary_logits
    return (
        [a["class_queries_logits"] for a in auxiliary] + [outputs.class_queries_logits],
        [a["masks_queries_logits"] for a in auxiliary] + [outputs.masks_queries_logits],
    )


def test_cli_converts_official_stdc1_checkpoint(tmp_path):
    """Parity case 1 as a detectron2 `.pth` (`{"model": ..., "iteration": ...}`, STDC aliases included)."""
    torch.save({"model": official_stdc1_tiny_state_dict(), "iteration": 89999}, tmp_path / "model_final.pth")
    config_dir = save_custom_config(tmp_path / "config", tiny_stdc_config(), "pem-stdc1-cityscapes-semantic")
    main(
        [
            "--checkpoint",
            str(tmp_path / "model_final.pth"),
            "--config",
            str(config_dir),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )

    output = tmp_path / "out"
    files = {p.name for p in output.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= files
    # The module files for trust_remote_code travel with the checkpoint.
    assert {"configuration_pem.py", "modeling_pem.py", "image_processing_pem.py", "modeling_stdc.py"} <= files
    saved = json.loads((output / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSemanticSegmentation"] == "modeling_pem.PEMForUniversalSegmentation"
    assert saved["id2label"]["11"] == "person" and saved["label2id"]["person"] == 11
    assert json.loads((output / "preprocessor_config.json").read_text())["size"] == {
        "shortest_edge": 1024,
        "longest_edge": 2048,
    }
    card = (output / "README.md").read_text()
    assert "Custom configuration" in card and "@inproceedings{cavagnero2024pem" in card
    assert f'from_pretrained("{output}")' in card

    model = PEMForUniversalSegmentation.from_pretrained(output).eval()
    pixel_values = load_file(PARITY / "stdc1_tiny_semantic" / "inputs.safetensors")["pixel_values"]
    check_official_predictions("stdc1_tiny_semantic", *predictions(model, pixel_values))


@pytest.mark.slow
def test_conversion_script_converts_official_stdc2_checkpoint(tmp_path):
    """Parity case 2 (STDC2; saved without aliases) through scripts/convert_pem_original_to_hf.py, in a new process."""
    config_dir = save_custom_config(tmp_path / "config", tiny_stdc_config("stdc2"), "pem-stdc1-cityscapes-panoptic")
    command = [
        sys.executable,
        str(ROOT / "scripts" / "convert_pem_original_to_hf.py"),
        "--checkpoint",
        str(PARITY / "stdc2_tiny_panoptic" / "weights.safetensors"),
        "--config",
        str(config_dir),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr

    model = PEMForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    pixel_values = load_file(PARITY / "stdc2_tiny_panoptic" / "inputs.safetensors")["pixel_values"]
    check_official_predictions("stdc2_tiny_panoptic", *predictions(model, pixel_values))


def test_cli_converts_official_r50_detectron2_pkl(tmp_path, torchvision_resnet50, torchvision_reference):
    """An ADE20K PEM-R50 checkpoint as a detectron2 `.pkl` of numpy arrays: the official head of parity case 3 on a
    FrozenBN ResNet-50 (torchvision weights under detectron2 names), converted with a custom yaml whose `_BASE_` is
    the official config. The converted model reproduces the official head outputs and torchvision's features."""
    backbone = torchvision_to_detectron2(torchvision_resnet50.state_dict())
    official = {f"backbone.{k}": v for k, v in backbone.items() if "fc" not in k and "num_batches_tracked" not in k}
    official.update({k: v.numpy() for k, v in load_file(PARITY / "r50_head_tiny" / "weights.safetensors").items()})
    official["criterion.empty_weight"] = np.array([1.0] * 150 + [0.1], dtype=np.float32)
    with open(tmp_path / "model_final.pkl", "wb") as file:
        pickle.dump({"model": official, "__author__": "PEM", "matching_heuristics": False}, file)
    config = tmp_path / "pem_R50_tiny_head.yaml"
    config.write_text((FIXTURES / "pem_R50_tiny_head.yaml").read_text().replace("_BASE_: ", f"_BASE_: {FIXTURES}/"))
    main(
        [
            "--checkpoint",
            str(tmp_path / "model_final.pkl"),
            "--config",
            str(config),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )

    processor = PEMImageProcessor.from_pretrained(tmp_path / "out")
    saved_settings = {k: v for k, v in processor.to_dict().items() if k != "auto_map"}
    assert saved_settings == PEMImageProcessor.from_preset("pem-r50-ade20k-semantic").to_dict()
    model = PEMForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    assert model.config.num_labels == 150 and model.config.num_queries == 10
    assert_same_features(model.model.pixel_level_module.encoder, torchvision_reference)

    inputs = load_file(PARITY / "r50_head_tiny" / "inputs.safetensors")
    features = [inputs[f"features.res{level}"].float() for level in (2, 3, 4, 5)]
    with torch.no_grad():
        mask_features, multi_scale_features = model.model.pixel_level_module.decoder(features)
        decoder = model.model.transformer_module(multi_scale_features, mask_features)
        class_logits = [model.class_predictor(states) for states in decoder.intermediate_states]
    check_official_predictions("r50_head_tiny", class_logits, list(decoder.masks_queries_logits))


def test_cli_backbone_weights_with_a_preset_and_push_to_hub(tmp_path, monkeypatch):
    """--backbone-weights builds an ImageNet-initialised official model; --push-to-hub uploads the directory."""
    calls = []

    class RecordingHfApi:
        """Records the calls, after checking they bind to huggingface_hub's real signatures."""

        def create_repo(self, repo_id, **kwargs):
            inspect.signature(HfApi.create_repo).bind(self, repo_id, **kwargs)
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            inspect.signature(HfApi.upload_folder).bind(self, **kwargs)
            files = sorted(path.name for path in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs["repo_id"], files))

    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    checkpoint = stdc_imagenet_checkpoint([2, 2, 2], base=64)
    torch.save({"state_dict": checkpoint}, tmp_path / "STDCNet813M_73.91.tar")
    output = tmp_path / "out"
    main(
        [
            "--backbone-weights",
            str(tmp_path / "STDCNet813M_73.91.tar"),
            "--config",
            "pem-stdc1-cityscapes-semantic",
            "--output-dir",
            str(output),
            "--push-to-hub",
            "someone/pem-stdc1-cityscapes-init",
        ]
    )
    assert calls == [
        ("create_repo", "someone/pem-stdc1-cityscapes-init", {"exist_ok": True}),
        ("upload_folder", "someone/pem-stdc1-cityscapes-init", sorted(p.name for p in output.iterdir())),
    ]
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "modeling_pem.py"} <= set(
        calls[1][2]
    )
    card = (output / "README.md").read_text()
    assert 'from_pretrained("someone/pem-stdc1-cityscapes-init")' in card
    assert "only the backbone is pretrained" in card

    weights = load_file(output / "model.safetensors")
    prefix = "model.pixel_level_module.encoder."
    for key, tensor in checkpoint.items():
        if key.startswith("module.features."):
            assert torch.equal(weights[prefix + key.removeprefix("module.")], tensor), key


def test_cli_reports_errors(tmp_path, capsys):
    save_file({"sem_seg_head.unknown.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--checkpoint",
                str(tmp_path / "bad.safetensors"),
                "--config",
                "pem-stdc1-cityscapes-semantic",
                "--output-dir",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "keys no conversion rule knows: sem_seg_head.unknown.weight" in error
    assert "model keys the checkpoint does not provide" in error
    assert not (tmp_path / "out").exists()


def test_model_card_reports_the_paper_result_of_official_presets():
    target = resolve_config("pem-stdc1-cityscapes-semantic")
    model = PEMForUniversalSegmentation(target.config)
    card = conversion.model_card(
        target, model, "official PEM checkpoint `model_final.pth`", trained=True, repo_id="someone/pem"
    )
    assert "78.3 mIoU" in card and "`pem-stdc1-cityscapes-semantic`" in card and "17.0 M parameters" in card
    assert "post_process_semantic_segmentation" in card

    target = resolve_config("pem-r50-ade20k-panoptic")
    card = conversion.model_card(target, model, "official PEM checkpoint", trained=True, repo_id="someone/pem")
    assert "38.5 PQ" in card and "post_process_panoptic_segmentation" in card
