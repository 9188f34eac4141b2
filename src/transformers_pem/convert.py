"""Conversion of official PEM (detectron2) state dicts to transformers-pem."""

import re

from torch import Tensor

# Official key (regex) -> our key. Applied in order; the first match wins.
_HEAD_RULES: list[tuple[str, str]] = [
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
]

# STDC: `backbone.features.*` keeps its names; `backbone.x{2,4,8,16,32}.*` are aliases of the same tensors.
_STDC_RULES: list[tuple[str, str]] = [(r"^backbone\.features\.", r"model.pixel_level_module.encoder.features.")]
_STDC_ALIAS = re.compile(r"^backbone\.x(2|4|8|16|32)\.")


def rename_official_key(key: str) -> str | None:
    """Our name for an official key, or `None` if no rule matches."""
    for pattern, replacement in _HEAD_RULES + _STDC_RULES:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return None


def convert_official_state_dict(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official PEM state dict (the `"model"` entry of a detectron2 checkpoint).

    STDC alias keys (`backbone.x{2,4,8,16,32}.*`, duplicates of `backbone.features.*`) are dropped. Returns the renamed
    state dict and the official keys no rule matched.
    """
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if _STDC_ALIAS.match(key):
            continue
        new_key = rename_official_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    return converted, unmapped
