"""Parity with the official PEM implementation, on reference outputs it produced (tests/fixtures/parity, derived from
the official code at commit 2dfeb3d with random weights; see scripts/make_parity_fixtures.py).

Tolerances follow the fixtures' measured float32 noise: |diff| <= 1e-3 * max(1, max|ref|) for continuous outputs
(porting bugs move them by >= 1e-2); the prototype indices PEM-CA selects must match exactly.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_configs import PARITY_HEAD
from transformers import ResNetConfig

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, STDCConfig
from transformers_pem.conversion.checkpoint_io import convert_official_state_dict, rename_official_key
from transformers_pem.transformer_decoder_pem import PEMPrototypeCrossAttention

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def assert_close_to_reference(actual: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    tolerance = 1e-3 * max(1.0, reference.abs().max().item())
    difference = (actual - reference).abs().max().item()
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    assert difference <= tolerance, f"{name}: max |diff| {difference:.3g} > {tolerance:.3g}"


def load_case(case: str, config: PEMConfig, with_backbone: bool) -> PEMForUniversalSegmentation:
    model = PEMForUniversalSegmentation(config).eval()
    state_dict, unmapped = convert_official_state_dict(load_file(FIXTURES / case / "weights.safetensors"))
    assert unmapped == []
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert unexpected == []
    if with_backbone:
        assert missing == []
    else:
        # Head-only state dict: no backbone and no criterion.
        head_missing = [key for key in missing if not key.startswith("model.pixel_level_module.encoder.")]
        assert head_missing == ["criterion.empty_weight"]
    return model


def check_predictions(case: str, class_logits: list[torch.Tensor], mask_logits: list[torch.Tensor]) -> None:
    """`class_logits`/`mask_logits`: the predictions in official order (aux 0..5, then final), or the final alone."""
    reference = load_file(FIXTURES / case / "outputs.safetensors")
    names = [f"aux_outputs.{i}." for i in range(len(class_logits) - 1)] + [""]
    for prefix, classes, masks in zip(names, class_logits, mask_logits):
        assert_close_to_reference(classes, reference[f"{prefix}pred_logits"], f"{case} {prefix}pred_logits")
        assert_close_to_reference(masks, reference[f"{prefix}pred_masks"], f"{case} {prefix}pred_masks")


def check_prototype_indices(case: str, indices: tuple[torch.Tensor, ...]) -> None:
    reference = load_file(FIXTURES / case / "indices.safetensors")
    for layer, layer_indices in enumerate(indices):
        torch.testing.assert_close(layer_indices, reference[f"predictor.layers.{layer}.most_similar_indices"])


@pytest.mark.parametrize(("case", "layers"), [("stdc1_tiny_semantic", [2, 2, 2]), ("stdc2_tiny_panoptic", [4, 5, 3])])
def test_full_stdc_model_matches_official(case, layers):
    config = PEMConfig.from_preset(
        "pem-stdc1-cityscapes-semantic", backbone_config=STDCConfig(base_channels=16, layers=layers), **PARITY_HEAD
    )
    model = load_case(case, config, with_backbone=True)
    pixel_values = load_file(FIXTURES / case / "inputs.safetensors")["pixel_values"]
    pixel_level_module = model.model.pixel_level_module
    with torch.no_grad():
        outputs = model(pixel_values, output_auxiliary_logits=True)
        features = list(pixel_level_module.encoder(pixel_values).feature_maps)
        mask_features, multi_scale_features = pixel_level_module.decoder(features)
        decoder = model.model.transformer_module(multi_scale_features, mask_features)
    auxiliary = outputs.auxiliary_logits
    check_predictions(
        case,
        [a["class_queries_logits"] for a in auxiliary] + [outputs.class_queries_logits],
        [a["masks_queries_logits"] for a in auxiliary] + [outputs.masks_queries_logits],
    )
    check_prototype_indices(case, decoder.prototype_indices)
    # The model returns them on request, on the training and the inference path.
    with torch.no_grad():
        check_prototype_indices(case, model(pixel_values, output_prototype_indices=True).prototype_indices)
        check_prototype_indices(
            case, model(pixel_values, output_auxiliary_logits=True, output_prototype_indices=True).prototype_indices
        )
    assert outputs.prototype_indices is None
    # The inference path (no auxiliary predictions; attention masks from resized mask features) is exact too.
    with torch.no_grad():
        fast = model(pixel_values)
        fast_decoder = model.model.transformer_module(
            multi_scale_features, mask_features, output_intermediate_masks=False
        )
    assert fast.auxiliary_logits is None
    check_predictions(case, [fast.class_queries_logits], [fast.masks_queries_logits])
    check_prototype_indices(case, fast_decoder.prototype_indices)
    # And with BatchNorm folded into the convolutions (the deployment path).
    with torch.no_grad():
        folded = model.fold_batch_norm()(pixel_values)
    check_predictions(case, [folded.class_queries_logits], [folded.masks_queries_logits])


def test_r50_head_matches_official():
    """The official head on ResNet-50-shaped features (150 classes); the backbone is tested separately."""
    case = "r50_head_tiny"
    config = PEMConfig.from_preset(
        "pem-r50-ade20k-semantic",
        backbone_config=ResNetConfig(depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]),
        **PARITY_HEAD,
    )
    model = load_case(case, config, with_backbone=False)
    inputs = load_file(FIXTURES / case / "inputs.safetensors")
    features = [inputs[f"features.res{level}"].float() for level in (2, 3, 4, 5)]
    with torch.no_grad():
        mask_features, multi_scale_features = model.model.pixel_level_module.decoder(features)
        decoder = model.model.transformer_module(multi_scale_features, mask_features)
        class_logits = [model.class_predictor(states) for states in decoder.intermediate_states]
    check_predictions(case, class_logits, list(decoder.masks_queries_logits))
    check_prototype_indices(case, decoder.prototype_indices)


def test_prototype_cross_attention_unit_matches_official():
    """One PEM-CA module on hand-made masks that reach every masking rule: a fully masked query gathers token 0, a
    logit of exactly 0 is not masked, and an image whose queries are all fully masked is un-masked."""
    directory = FIXTURES / "pem_ca_unit"
    weights, inputs = load_file(directory / "weights.safetensors"), load_file(directory / "inputs.safetensors")
    reference = load_file(directory / "outputs.safetensors")
    module = PEMPrototypeCrossAttention(hidden_dim=32, num_heads=4).eval()
    prefix = "sem_seg_head.predictor.transformer_cross_attention_layers.0."
    prefix_ours = "model.transformer_module.layers.0.cross_attn."
    state_dict = {rename_official_key(prefix + k).removeprefix(prefix_ours): v for k, v in weights.items()}
    module.load_state_dict(state_dict)

    hidden_states = inputs["tgt"].transpose(0, 1)  # official (Q, B, C) -> (B, Q, C)
    query_position = inputs["query_pos"].transpose(0, 1)
    for name, mask in (("masked", inputs["memory_mask"]), ("no_mask", None)):
        with torch.no_grad():
            output, indices = module(hidden_states, inputs["memory"] + inputs["pos"], query_position, mask)
        assert_close_to_reference(output.transpose(0, 1), reference[f"out.{name}"], f"PEM-CA out.{name}")
        torch.testing.assert_close(indices, reference[f"most_similar_indices.{name}"])
    # Spot-check the rules themselves, independently of the reference tensors (README of the fixture, section 7).
    with torch.no_grad():
        _, indices = module(hidden_states, inputs["memory"] + inputs["pos"], query_position, inputs["memory_mask"])
    assert (indices[0, :, 1] == 0).all()  # image 0, query 1: fully masked -> token 0
    assert (indices[0, :, 3] == 18).all()  # image 0, query 3: only zero logits survive, the one at (2, 4) wins
    assert (indices[2, :, 0] == 22).all()  # image 2, query 0: the single positive logit at (3, 1)
