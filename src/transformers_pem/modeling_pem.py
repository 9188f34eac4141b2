"""PyTorch PEM (Prototype-based Efficient MaskFormer, Cavagnero et al., CVPR 2024)."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetShortCut,
)
from transformers.utils import ModelOutput

from .configuration_pem import PEMConfig
from .configuration_stdc import STDCConfig
from .loss_pem import PEMLoss
from .modeling_stdc import STDCBackbone, STDCConvLayer


@dataclass
class PEMPixelLevelModuleOutput(ModelOutput):
    r"""
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height / 32, width / 32)`):
        Last backbone feature map.
    encoder_hidden_states (`tuple(torch.FloatTensor)`):
        The four backbone feature maps at strides 4, 8, 16 and 32.
    decoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, mask_dim, height / 4, width / 4)`):
        Per-pixel mask features.
    decoder_hidden_states (`tuple(torch.FloatTensor)`):
        The three multi-scale pixel-decoder features at strides 32, 16 and 8 that the transformer decoder attends to.
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor] | None = None
    decoder_last_hidden_state: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor] | None = None


@dataclass
class PEMModelOutput(ModelOutput):
    r"""
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height / 32, width / 32)`):
        Last backbone feature map.
    pixel_decoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, mask_dim, height / 4, width / 4)`):
        Per-pixel mask features.
    transformer_decoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_queries, hidden_dim)`):
        Query states after the last decoder layer (before the final LayerNorm).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Backbone feature maps, returned with `output_hidden_states=True`.
    pixel_decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Multi-scale pixel-decoder features (strides 32, 16, 8), returned with `output_hidden_states=True`.
    transformer_decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Query states: the learnable queries, then the output of every decoder layer, returned with
        `output_hidden_states=True`.
    transformer_decoder_intermediate_states (`tuple(torch.FloatTensor)`):
        LayerNorm-ed query states used by the prediction heads: `decoder_layers + 1` tensors of shape
        `(batch_size, num_queries, hidden_dim)`, the first from the learnable queries.
    masks_queries_logits (`tuple(torch.FloatTensor)`):
        Mask logits of every prediction, `decoder_layers + 1` tensors of shape
        `(batch_size, num_queries, height / 4, width / 4)`.
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor] | None = None
    masks_queries_logits: tuple[torch.FloatTensor] | None = None


@dataclass
class PEMForUniversalSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.Tensor`, *optional*):
        Weighted sum of the classification, mask and dice losses of the final and all auxiliary predictions,
        returned when `mask_labels` and `class_labels` are given.
    loss_dict (`dict[str, torch.Tensor]`, *optional*):
        The unweighted loss terms (`loss_cross_entropy`, `loss_mask`, `loss_dice`, and `_{i}` for auxiliary
        prediction `i`).
    class_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, num_labels + 1)`):
        Class logits of every query; the last class is "no object".
    masks_queries_logits (`torch.FloatTensor` of shape `(batch_size, num_queries, height / 4, width / 4)`):
        Mask logits of every query at stride 4 of the (padded) input.
    auxiliary_logits (`list[dict[str, torch.FloatTensor]]`, *optional*):
        `class_queries_logits` and `masks_queries_logits` of the earlier predictions (the learnable queries, then
        every decoder layer but the last).
    encoder_last_hidden_state, pixel_decoder_last_hidden_state, transformer_decoder_last_hidden_state:
        See [`PEMModelOutput`].
    encoder_hidden_states, pixel_decoder_hidden_states, transformer_decoder_hidden_states (*optional*):
        See [`PEMModelOutput`]; returned with `output_hidden_states=True`.
    pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
        The `pixel_mask` given to the forward (1 = image, 0 = padding), passed through so that post-processing can
        drop the padded area (the pipeline calls post-processing with the outputs only).
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    pixel_mask: torch.LongTensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Pixel decoder
# ---------------------------------------------------------------------------------------------------------------------


class PEMConvNormReLU(nn.Module):
    """Convolution without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(hidden_states)), inplace=True)


class PEMContextModulation(nn.Module):
    """Context-based self-modulation (CSM): re-weights channels with a gate computed from the global average.

    The official module applies the sigmoid twice (an `nn.Sigmoid` inside its MLP and `.sigmoid()` after it), so the
    gate lies in (0.5, 0.731). Trained weights depend on it, so it is kept.
    """

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels // reduction)
        self.expand = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, hidden_states: Tensor) -> Tensor:
        context = hidden_states.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        gate = self.expand(F.relu(self.norm(self.reduce(context)))).sigmoid().sigmoid()
        return torch.addcmul(hidden_states, hidden_states, gate)  # hidden_states + hidden_states * gate


class PEMModulatedDeformConv(nn.Module):
    """3x3 modulated deformable convolution (DCNv2) without bias.

    Computed as a weighted gather, then one matrix product with the weight. Every tap of every output pixel is the sum
    of the 4 bilinear corners of its deformed position, each weighted by its bilinear weight times the tap's
    modulation (0 for a corner outside the map): `F.embedding_bag` over the channels_last rows of the input does this
    in one fused call. This equals `torchvision.ops.deform_conv2d(input, offset, weight, padding=1, mask=modulation)`
    (same offset layout, same zero padding; checked in the tests) and is 5-8x faster on CPU, where torchvision's
    kernel runs single-threaded.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.register_parameter("bias", None)  # the official layer has none; set when BatchNorm is folded in

    def forward(self, hidden_states: Tensor, offset: Tensor, modulation: Tensor) -> Tensor:
        """hidden_states (B, C, H, W); offset (B, 2 * k * k, H, W) with channel 2t = dy and 2t + 1 = dx of tap t
        (row-major over the kernel); modulation (B, k * k, H, W). Returns (B, C_out, H, W) in channels_last layout."""
        batch_size, channels, height, width = hidden_states.shape
        kernel_size, taps = self.kernel_size, self.kernel_size**2
        # Sampling positions in pixels, (B, H, W, k * k); at least float32 (under autocast, offsets may be bf16).
        position_dtype = torch.promote_types(offset.dtype, torch.float32)
        offset = offset.to(position_dtype).view(batch_size, taps, 2, height, width)
        offset = offset.permute(0, 3, 4, 1, 2)  # (B, H, W, k * k, 2)
        kernel = torch.arange(kernel_size, dtype=offset.dtype, device=offset.device) - kernel_size // 2
        tap_y, tap_x = kernel.repeat_interleave(kernel_size), kernel.repeat(kernel_size)  # (k * k,)
        rows = torch.arange(height, dtype=offset.dtype, device=offset.device)[:, None, None]
        columns = torch.arange(width, dtype=offset.dtype, device=offset.device)[None, :, None]
        sample_y = rows + tap_y + offset[..., 0]
        sample_x = columns + tap_x + offset[..., 1]
        top, left = sample_y.floor(), sample_x.floor()
        fraction_y, fraction_x = sample_y - top, sample_x - left
        top, left = top.long(), left.long()
        modulation = modulation.to(position_dtype).permute(0, 2, 3, 1)  # (B, H, W, k * k)
        # Row of pixel (y, x) of image b in the (B * H * W, C) table of input rows.
        image_start = torch.arange(batch_size, device=offset.device)[:, None, None, None] * (height * width)
        indices, weights = [], []
        for corner_y, weight_y in ((top, (1 - fraction_y) * modulation), (top + 1, fraction_y * modulation)):
            inside_y = (corner_y >= 0) & (corner_y < height)
            row_start = image_start + corner_y.clamp(0, height - 1) * width
            for corner_x, weight_x in ((left, 1 - fraction_x), (left + 1, fraction_x)):
                inside = inside_y & (corner_x >= 0) & (corner_x < width)
                indices.append(row_start + corner_x.clamp(0, width - 1))
                weights.append(weight_y * weight_x * inside)
        indices = torch.stack(indices, dim=-1).view(-1, 4)  # (B * H * W * k * k, 4 corners)
        weights = torch.stack(weights, dim=-1).view(-1, 4).to(hidden_states.dtype)
        table = hidden_states.permute(0, 2, 3, 1).reshape(-1, channels)  # a view when channels_last
        sampled = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")  # (B * H * W * k * k, C)
        # (B * H * W, k * k * C) @ (k * k * C, C_out), the weight ordered (tap, channel) like the samples.
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.weight.shape[0], -1)
        output = torch.matmul(sampled.view(-1, taps * channels), weight.t())
        if self.bias is not None:
            output = output + self.bias
        return output.view(batch_size, height, width, -1).permute(0, 3, 1, 2)


class PEMDeformableLayer(nn.Module):
    """Modulated deformable 3x3 conv + BN + ReLU, then a 2x transposed-conv upsampling + BN + ReLU.

    Returns the level feature and its upsampled version for the next (finer) level.
    """

    def __init__(self, channels: int):
        super().__init__()
        # 27 channels: 18 offsets, used in the layout of `deform_conv2d` (channel 2k = dy, 2k + 1 = dx of tap k),
        # then 9 modulation logits.
        self.offset_conv = nn.Conv2d(channels, 27, kernel_size=3, padding=1)
        self.deform_conv = PEMModulatedDeformConv(channels, channels)
        self.deform_norm = nn.BatchNorm2d(channels)
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False)
        self.upsample_norm = nn.BatchNorm2d(channels)

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        offset_and_modulation = self.offset_conv(hidden_states)
        offset, modulation = offset_and_modulation[:, :18], offset_and_modulation[:, 18:].sigmoid()
        hidden_states = F.relu(self.deform_norm(self.deform_conv(hidden_states, offset, modulation)), inplace=True)
        upsampled = F.relu(self.upsample_norm(self.upsample(hidden_states)), inplace=True)
        return hidden_states, upsampled


class PEMPixelDecoder(nn.Module):
    """PEM's efficient pixel decoder: a top-down path of CSM-modulated projections and deformable layers.

    Given backbone features at strides 4, 8, 16, 32 it returns the per-pixel mask features (stride 4) and the three
    features at strides 32, 16, 8 that the transformer decoder attends to.
    """

    def __init__(self, config: PEMConfig, feature_channels: list[int]):
        super().__init__()
        if len(feature_channels) != 4:
            raise ValueError(
                f"PEM needs a backbone with 4 output feature maps (strides 4, 8, 16, 32), got {len(feature_channels)}."
                " Set `out_features` of the backbone config to its last four stages."
            )
        conv_dim = config.conv_dim
        self.input_projections = nn.ModuleList([PEMConvNormReLU(channels, conv_dim) for channels in feature_channels])
        self.global_context = PEMConvNormReLU(feature_channels[-1], conv_dim)
        # Modulations and deformable layers are ordered as the top-down path uses them: strides 32, 16, 8 (and 4 for
        # the last modulation); the input projections follow the backbone order, strides 4 to 32.
        self.modulations = nn.ModuleList([PEMContextModulation(conv_dim) for _ in range(4)])
        self.deformable_layers = nn.ModuleList([PEMDeformableLayer(conv_dim) for _ in range(3)])
        self.mask_projection = PEMConvNormReLU(conv_dim, config.mask_dim)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if self.training and features[-1].shape[0] == 1:
            raise ValueError(
                "PEM's pixel decoder applies BatchNorm to 1x1 pooled maps, which cannot be trained with one image per "
                "batch (per process). Use a batch size of at least 2 per device, or call `model.eval()`."
            )
        projected = [projection(feature) for projection, feature in zip(self.input_projections, features)]
        global_context = self.global_context(features[-1].mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)

        # Top-down: stride 32 -> 16 -> 8, each level adds the upsampled output of the coarser one.
        multi_scale_features = []
        upsampled = global_context
        for level, deformable_layer in enumerate(self.deformable_layers):
            hidden_states = self.modulations[level](projected[3 - level]).add_(upsampled)
            hidden_states, upsampled = deformable_layer(hidden_states)
            multi_scale_features.append(hidden_states)
        hidden_states = self.modulations[3](projected[0]).add_(upsampled)
        mask_features = self.mask_projection(hidden_states)  # (B, mask_dim, H/4, W/4), non-negative
        return mask_features, multi_scale_features


class PEMPixelLevelModule(nn.Module):
    """Backbone + pixel decoder."""

    def __init__(self, config: PEMConfig):
        super().__init__()
        # STDC is built directly: under trust_remote_code it is not registered with AutoBackbone.
        if isinstance(config.backbone_config, STDCConfig):
            self.encoder = STDCBackbone(config.backbone_config)
        else:
            self.encoder = load_backbone(config)
            # transformers' ResNet applies its ReLUs out of place; in place (as in torchvision's ResNet, and safe: each
            # ReLU input is a fresh BatchNorm or residual-sum output) they skip writing a new feature map, which makes
            # the backbone 14-21% faster on CPU.
            for module in self.encoder.modules():
                if isinstance(module, (ResNetConvLayer, ResNetBasicLayer, ResNetBottleNeckLayer)):
                    if isinstance(module.activation, nn.ReLU):
                        module.activation.inplace = True
        self.decoder = PEMPixelDecoder(config, self.encoder.channels)

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> PEMPixelLevelModuleOutput:
        # channels_last is oneDNN's fast convolution layout on CPU (ResNet-50 runs 1.6x faster than in NCHW) and the
        # tensor-core layout on GPU; the convolutions keep it, so every feature map is channels_last.
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        features = list(self.encoder(pixel_values).feature_maps)
        mask_features, multi_scale_features = self.decoder(features)
        return PEMPixelLevelModuleOutput(
            encoder_last_hidden_state=features[-1],
            encoder_hidden_states=tuple(features) if output_hidden_states else None,
            decoder_last_hidden_state=mask_features,
            decoder_hidden_states=tuple(multi_scale_features),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Transformer decoder
# ---------------------------------------------------------------------------------------------------------------------


class PEMSinePositionEmbedding(nn.Module):
    """DETR's normalised sine position embedding, no padding mask: channels `[pos_y, pos_x]`, sin/cos interleaved."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, height: int, width: int, device: torch.device) -> Tensor:
        eps = 1e-6
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), dim=2
        )
        return pos.permute(2, 0, 1).unsqueeze(0)  # (1, 2F, H, W), channels_last like the features it is added to


class PEMPrototypeCrossAttention(nn.Module):
    """Prototype-based masked cross-attention (PEM-CA).

    Every head of every query selects its single most similar token (its prototype) among the tokens the previous
    mask prediction keeps, and the query is updated from that prototype instead of from a softmax over all tokens.
    The official module's numerics are reproduced, including two quirks that trained weights depend on: the
    modulation output is L2-normalised over the *query* axis, and a query whose mask excludes every token gathers
    token 0 (the masking is only lifted when all queries of an image are fully masked).
    """

    # Tokens scored at a time in the prototype selection.
    selection_chunk_size = 2048

    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        # Local representation of the memory: BN, depthwise 3x3 conv, linear projection.
        self.memory_norm = nn.BatchNorm2d(hidden_dim)
        self.memory_conv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.memory_proj = nn.Linear(hidden_dim, hidden_dim)
        self.query_norm = nn.LayerNorm(hidden_dim)
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)
        self.modulation_proj = nn.Linear(hidden_dim, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)
        self.alpha = nn.Parameter(torch.ones(1, 1, hidden_dim))

    def select_prototypes(self, memory: Tensor, queries: Tensor, mask_logits: Tensor | None) -> tuple[Tensor, Tensor]:
        """Gather, per head and query, the most similar memory token that the mask keeps.

        memory (B, N, C), queries (B, Q, C), mask_logits (B, Q, N) or None. A token is masked when its logit is < 0.
        Returns the gathered prototypes (B, Q, C) and the token indices (B, heads, Q).
        """
        batch_size, num_tokens, channels = memory.shape
        num_queries = queries.shape[1]
        head_dim = channels // self.num_heads
        memory_heads = memory.view(batch_size, num_tokens, self.num_heads, head_dim).transpose(1, 2)  # (B, h, N, D)
        query_heads = queries.view(batch_size, num_queries, self.num_heads, head_dim).transpose(1, 2)  # (B, h, Q, D)
        # Only the argmax is used (no gradient flows through the selection), so no graph is kept for the scores.
        with torch.no_grad():
            mask_bias = None
            if mask_logits is not None:
                masked = mask_logits < 0  # (B, Q, N)
                # Lift the mask of an image only if every one of its queries is fully masked.
                all_masked = masked.all(dim=2).all(dim=1)  # (B,)
                masked = masked & ~all_masked[:, None, None]
                # -1e30 where masked, 0 elsewhere, added to the scores (broadcast over the heads). Any score below
                # ~1e22 in magnitude vanishes in the rounding of -1e30 + score (the scores are cosine similarities),
                # so every masked token scores exactly -1e30: the selection equals the official masked fill with
                # -inf, including a fully masked query, whose tokens all tie and which selects token 0. Building it
                # by conversion is ~6x faster on CPU than `masked_fill_` or `torch.where` with the boolean mask.
                mask_bias = masked.to(memory.dtype).mul_(-1e30)
            # Scored in chunks of tokens, so that the (B, h, Q, chunk) scores are reused memory rather than one new
            # (B, h, Q, N) tensor (1.7x faster at N = 32768). `max` returns the first maximum's index like `argmax`
            # (3x faster on CPU), and the strict `>` keeps the earlier chunk on ties: the result is the argmax over
            # all tokens, and a fully masked query (all -inf) selects token 0, as officially.
            best_scores, indices = None, None
            for start in range(0, num_tokens, self.selection_chunk_size):
                end = start + self.selection_chunk_size
                similarity = torch.matmul(query_heads, memory_heads[:, :, start:end].transpose(2, 3))  # (B, h, Q, T)
                if mask_bias is not None:
                    similarity += mask_bias[:, None, :, start:end]
                scores, chunk_indices = similarity.max(dim=3)  # (B, h, Q)
                if best_scores is None:
                    best_scores, indices = scores, chunk_indices
                else:
                    better = scores > best_scores
                    best_scores = torch.where(better, scores, best_scores)
                    indices = torch.where(better, chunk_indices + start, indices)
        prototypes = torch.gather(memory_heads, 2, indices.unsqueeze(-1).expand(-1, -1, -1, head_dim))
        return prototypes.transpose(1, 2).reshape(batch_size, num_queries, channels), indices

    def forward(
        self, hidden_states: Tensor, memory: Tensor, query_position: Tensor, mask_logits: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """hidden_states (B, Q, C), memory (B, C, H, W) with its position embedding added, query_position (B, Q, C),
        mask_logits (B, Q, H, W). Returns the updated queries (B, Q, C) and the prototype indices (B, heads, Q)."""
        memory = self.memory_conv(self.memory_norm(memory))
        memory = self.memory_proj(memory.flatten(2).transpose(1, 2))  # (B, HW, C)
        queries = self.query_proj(self.query_norm(hidden_states + query_position))  # (B, Q, C)
        memory = F.normalize(memory, dim=-1)
        queries = F.normalize(queries, dim=-1)
        mask_logits = mask_logits.flatten(2) if mask_logits is not None else None
        prototypes, indices = self.select_prototypes(memory, queries, mask_logits)
        # Normalised over the query axis (dim 1), as in the official code.
        attended = F.normalize(self.modulation_proj(prototypes * queries), dim=1) * self.alpha + prototypes
        return hidden_states + self.out_proj(attended), indices


class PEMDecoderLayer(nn.Module):
    """PEM-CA, then self-attention, then a feed-forward network (pre- or post-norm)."""

    def __init__(self, config: PEMConfig):
        super().__init__()
        hidden_dim = config.hidden_dim
        self.pre_norm = config.pre_norm
        self.cross_attn = PEMPrototypeCrossAttention(hidden_dim, config.num_attention_heads)
        self.self_attn = nn.MultiheadAttention(hidden_dim, config.num_attention_heads, batch_first=True)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, config.dim_feedforward)
        self.fc2 = nn.Linear(config.dim_feedforward, hidden_dim)
        self.final_layer_norm = nn.LayerNorm(hidden_dim)

    def forward(
        self, hidden_states: Tensor, memory: Tensor, query_position: Tensor, mask_logits: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """memory (B, C, H, W) with its position embedding added; see [`PEMPrototypeCrossAttention`]."""
        hidden_states, indices = self.cross_attn(hidden_states, memory, query_position, mask_logits)

        if self.pre_norm:
            normed = self.self_attn_layer_norm(hidden_states)
            query_key = normed + query_position
            hidden_states = hidden_states + self.self_attn(query_key, query_key, normed, need_weights=False)[0]
            hidden_states = hidden_states + self.fc2(F.relu(self.fc1(self.final_layer_norm(hidden_states))))
        else:
            query_key = hidden_states + query_position
            attended = self.self_attn(query_key, query_key, hidden_states, need_weights=False)[0]
            hidden_states = self.self_attn_layer_norm(hidden_states + attended)
            hidden_states = self.final_layer_norm(hidden_states + self.fc2(F.relu(self.fc1(hidden_states))))
        return hidden_states, indices


class PEMMaskEmbedder(nn.Module):
    """Three-layer MLP that turns query states into mask embeddings."""

    def __init__(self, hidden_dim: int, mask_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(hidden_dim, hidden_dim), nn.Linear(hidden_dim, hidden_dim), nn.Linear(hidden_dim, mask_dim)]
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = F.relu(self.layers[0](hidden_states))
        hidden_states = F.relu(self.layers[1](hidden_states))
        return self.layers[2](hidden_states)


@dataclass
class PEMTransformerDecoderOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_queries, hidden_dim)`):
        Query states after the last layer.
    hidden_states (`tuple(torch.FloatTensor)`):
        The learnable queries, then the output of every layer.
    intermediate_states (`tuple(torch.FloatTensor)`):
        LayerNorm-ed query states of every prediction.
    masks_queries_logits (`tuple(torch.FloatTensor)`):
        Mask logits of every prediction at the resolution of the mask features.
    prototype_indices (`tuple(torch.LongTensor)`):
        Token index each head of each query selected in every layer, `(batch_size, num_heads, num_queries)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    intermediate_states: tuple[torch.FloatTensor] | None = None
    masks_queries_logits: tuple[torch.FloatTensor] | None = None
    prototype_indices: tuple[torch.LongTensor] | None = None


class PEMTransformerDecoder(nn.Module):
    """Queries refined by PEM-CA layers that cycle through the pixel-decoder levels (strides 32, 16, 8); a mask is
    predicted from the queries before the first layer and after every layer, and each prediction, resized to the
    next level, masks the next cross-attention."""

    def __init__(self, config: PEMConfig):
        super().__init__()
        hidden_dim = config.hidden_dim
        self.num_feature_levels = config.num_feature_levels
        self.position_embedder = PEMSinePositionEmbedding(hidden_dim // 2)
        if config.conv_dim != hidden_dim or config.enforce_input_projection:
            self.input_projections = nn.ModuleList(
                [nn.Conv2d(config.conv_dim, hidden_dim, kernel_size=1) for _ in range(self.num_feature_levels)]
            )
        else:
            self.input_projections = nn.ModuleList([nn.Identity() for _ in range(self.num_feature_levels)])
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.queries_features = nn.Embedding(config.num_queries, hidden_dim)
        self.queries_embedder = nn.Embedding(config.num_queries, hidden_dim)
        self.layers = nn.ModuleList([PEMDecoderLayer(config) for _ in range(config.decoder_layers)])
        self.layernorm = nn.LayerNorm(hidden_dim)
        self.mask_embedder = PEMMaskEmbedder(hidden_dim, config.mask_dim)

    def forward(
        self, multi_scale_features: list[Tensor], mask_features: Tensor, output_intermediate_masks: bool = True
    ) -> PEMTransformerDecoderOutput:
        """multi_scale_features: the pixel-decoder levels (strides 32, 16, 8); mask_features (B, mask_dim, H/4, W/4).

        With `output_intermediate_masks=False` only the final mask logits are computed at full resolution: the
        earlier predictions are only needed as attention masks at the level sizes, and since bilinear resizing is
        linear, they are computed directly from mask features resized to each level (same values, up to rounding).
        """
        batch_size = mask_features.shape[0]
        memories, sizes = [], []
        for level, features in enumerate(multi_scale_features):
            height, width = features.shape[-2:]
            sizes.append((height, width))
            position = self.position_embedder(height, width, features.device).to(features.dtype)
            # The level embedding, then the position embedding (the official order of the additions), computed once
            # for all the layers that attend to this level.
            memory = self.input_projections[level](features) + self.level_embed.weight[level][None, :, None, None]
            memories.append(memory.add_(position))
        if not output_intermediate_masks:
            # channels_last, as the mask features are: PyTorch's CPU kernel is fast in this layout.
            level_mask_features = [
                F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in sizes
            ]

        query_position = self.queries_embedder.weight.unsqueeze(0).expand(batch_size, -1, -1)
        hidden_states = self.queries_features.weight.unsqueeze(0).expand(batch_size, -1, -1)
        all_hidden_states, intermediate_states, masks_queries_logits, prototype_indices = [hidden_states], [], [], []
        num_layers = len(self.layers)
        # Prediction i comes from the queries after i layers (prediction 0 from the learnable queries) and masks the
        # cross-attention of layer i, which attends to level i % num_feature_levels.
        for index in range(num_layers + 1):
            normed = self.layernorm(hidden_states)
            mask_embeddings = self.mask_embedder(normed)  # (B, Q, mask_dim)
            intermediate_states.append(normed)
            if output_intermediate_masks or index == num_layers:
                mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embeddings, mask_features)
                masks_queries_logits.append(mask_logits)
            if index == num_layers:
                break
            level = index % self.num_feature_levels
            if output_intermediate_masks:
                attention_mask = F.interpolate(mask_logits, size=sizes[level], mode="bilinear", align_corners=False)
            else:
                attention_mask = torch.einsum("bqc,bchw->bqhw", mask_embeddings, level_mask_features[level])
            hidden_states, indices = self.layers[index](hidden_states, memories[level], query_position, attention_mask)
            all_hidden_states.append(hidden_states)
            prototype_indices.append(indices)

        return PEMTransformerDecoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states),
            intermediate_states=tuple(intermediate_states),
            masks_queries_logits=tuple(masks_queries_logits),
            prototype_indices=tuple(prototype_indices),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


class PEMPreTrainedModel(PreTrainedModel):
    config: PEMConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; with the classes registered for trust_remote_code (done by `import
        transformers_pem`), the saved `auto_map` also names `AutoModel` and `AutoModelForSemanticSegmentation`, which
        `pipeline("image-segmentation")` loads through."""
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_pem.PEMModel",
                "AutoModelForSemanticSegmentation": "modeling_pem.PEMForUniversalSegmentation",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialisation of the official PEM code (detectron2 conventions)."""
        if isinstance(module, PEMConvNormReLU):
            init.kaiming_normal_(module.conv.weight, a=1)
        elif isinstance(module, PEMModulatedDeformConv):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, PEMDeformableLayer):
            # Zero offsets and modulation logits: the layer starts as 0.5 x a plain 3x3 convolution.
            init.zeros_(module.offset_conv.weight)
            init.zeros_(module.offset_conv.bias)
            init.copy_(module.upsample.weight, _bilinear_upsampling_kernel(module.upsample.weight))
        elif isinstance(module, PEMContextModulation):
            _default_init(module.reduce)
            _default_init(module.expand)
        elif isinstance(module, PEMPrototypeCrossAttention):
            init.ones_(module.alpha)
            for layer in (module.memory_conv, module.memory_proj, module.query_proj, module.modulation_proj):
                _default_init(layer)
            _default_init(module.out_proj)
        elif isinstance(module, PEMDecoderLayer):
            for parameter in (module.self_attn.in_proj_weight, module.self_attn.out_proj.weight):
                init.xavier_uniform_(parameter, gain=self.config.init_xavier_std)
            init.xavier_uniform_(module.fc1.weight, gain=self.config.init_xavier_std)
            init.xavier_uniform_(module.fc2.weight, gain=self.config.init_xavier_std)
            init.zeros_(module.self_attn.in_proj_bias)
            init.zeros_(module.self_attn.out_proj.bias)
            for linear in (module.fc1, module.fc2):
                bound = 1 / math.sqrt(linear.in_features)
                init.uniform_(linear.bias, -bound, bound)
        elif isinstance(module, PEMTransformerDecoder):
            for projection in module.input_projections:
                if isinstance(projection, nn.Conv2d):
                    init.kaiming_uniform_(projection.weight, a=1)
                    init.zeros_(projection.bias)
        elif isinstance(module, PEMMaskEmbedder):
            for linear in module.layers:
                _default_init(linear)
        elif isinstance(module, PEMLoss):
            init.copy_(module.empty_weight, module.expected_empty_weight())
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, PEMForUniversalSegmentation):
            _default_init(module.class_predictor)
        else:
            super()._init_weights(module)


# (convolution, BatchNorm applied right after it) attribute pairs of the modules whose BatchNorm can be folded.
_FOLDABLE_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    PEMConvNormReLU: (("conv", "norm"),),
    PEMDeformableLayer: (("deform_conv", "deform_norm"), ("upsample", "upsample_norm")),
    STDCConvLayer: (("conv", "bn"),),
    ResNetConvLayer: (("convolution", "normalization"),),
    ResNetShortCut: (("convolution", "normalization"),),
}


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution (weight scaled per
    output channel, bias added) and replace it with `nn.Identity`. Covers the PEM pixel decoder, the STDC and
    transformers ResNet backbones and `nn.Sequential` conv/BN pairs. Returns the number of folded layers."""

    def fold(conv: nn.Module, norm: nn.BatchNorm2d) -> None:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        shape = [1] * conv.weight.ndim
        shape[1 if isinstance(conv, nn.ConvTranspose2d) else 0] = -1
        conv.weight.copy_(conv.weight * scale.view(shape))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias)

    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    fold(conv, norm)
                    module._modules[second] = nn.Identity()
                    folded += 1
        for conv_name, norm_name in _FOLDABLE_PAIRS.get(type(module), ()):
            norm = getattr(module, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                fold(getattr(module, conv_name), norm)
                setattr(module, norm_name, nn.Identity())
                folded += 1
    return folded


def _default_init(layer: nn.Linear | nn.Conv2d) -> None:
    """PyTorch's default initialisation of a linear or convolution layer, which the official heads keep."""
    init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    if layer.bias is not None:
        bound = 1 / math.sqrt(layer.weight[0].numel())
        init.uniform_(layer.bias, -bound, bound)


def _bilinear_upsampling_kernel(weight: Tensor) -> Tensor:
    """The official upsampling init: the bilinear-interpolation kernel written into `weight[:, 0]` of a transposed
    convolution (in, out, k, k); the other output channels keep their default init."""
    size = weight.shape[-1]
    factor = math.ceil(size / 2)
    center = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    profile = 1 - (torch.arange(size, dtype=torch.float32) / factor - center).abs()
    result = weight.detach().clone()
    result[:, 0] = profile[:, None] * profile[None, :]
    return result


class PEMModel(PEMPreTrainedModel):
    """PEM without the class head: backbone, pixel decoder and transformer decoder."""

    def __init__(self, config: PEMConfig):
        super().__init__(config)
        self.pixel_level_module = PEMPixelLevelModule(config)
        self.transformer_module = PEMTransformerDecoder(config)
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_intermediate_masks: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PEMModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised images. Any size works: the model pads them with zeros to a multiple of 32 at the bottom/right
            and crops the mask logits back to `ceil(height / 4) x ceil(width / 4)`.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Accepted for API compatibility with Mask2Former and ignored, like the official model ignores padding.
        output_intermediate_masks (`bool`, *optional*, defaults to `True`):
            Compute the full-resolution mask logits of every prediction. With `False`, `masks_queries_logits` holds
            only the final prediction, and the faster inference path is used (see [`PEMTransformerDecoder`]).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        _check_pixel_values(pixel_values, self.config)

        # The top-down path adds 2x-upsampled coarse features to finer ones, so the input must be a multiple of 32:
        # pad with zeros at the bottom/right (as the official ImageList does) and crop the masks back.
        height, width = pixel_values.shape[-2:]
        pad_height, pad_width = -height % 32, -width % 32
        if pad_height or pad_width:
            pixel_values = F.pad(pixel_values, (0, pad_width, 0, pad_height))
        pixel_level_outputs = self.pixel_level_module(pixel_values, output_hidden_states)
        decoder_outputs = self.transformer_module(
            list(pixel_level_outputs.decoder_hidden_states),
            pixel_level_outputs.decoder_last_hidden_state,
            output_intermediate_masks=output_intermediate_masks,
        )
        masks_queries_logits = decoder_outputs.masks_queries_logits
        if pad_height or pad_width:
            mask_height, mask_width = math.ceil(height / 4), math.ceil(width / 4)
            masks_queries_logits = tuple(masks[..., :mask_height, :mask_width] for masks in masks_queries_logits)
        output = PEMModelOutput(
            encoder_last_hidden_state=pixel_level_outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=pixel_level_outputs.decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=decoder_outputs.last_hidden_state,
            encoder_hidden_states=pixel_level_outputs.encoder_hidden_states,
            pixel_decoder_hidden_states=pixel_level_outputs.decoder_hidden_states if output_hidden_states else None,
            transformer_decoder_hidden_states=decoder_outputs.hidden_states if output_hidden_states else None,
            transformer_decoder_intermediate_states=decoder_outputs.intermediate_states,
            masks_queries_logits=masks_queries_logits,
        )
        return output if return_dict else output.to_tuple()


def _check_pixel_values(pixel_values: Tensor, config: PEMConfig) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        raise ValueError(
            "pixel_values must be a 4-D tensor (batch_size, channels, height, width); got "
            f"{getattr(pixel_values, 'shape', type(pixel_values))}. Use PEMImageProcessor to prepare images."
        )
    num_channels = getattr(config.backbone_config, "num_channels", 3)
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the backbone expects {num_channels}. "
            "Convert images to RGB (PEMImageProcessor does this)."
        )


class PEMForUniversalSegmentation(PEMPreTrainedModel):
    """PEM with its class head and training criterion: semantic, instance and panoptic segmentation."""

    def __init__(self, config: PEMConfig):
        super().__init__(config)
        self.model = PEMModel(config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = PEMLoss(
            num_labels=config.num_labels,
            no_object_weight=config.no_object_weight,
            class_weight=config.class_weight,
            mask_weight=config.mask_weight,
            dice_weight=config.dice_weight,
            train_num_points=config.train_num_points,
            oversample_ratio=config.oversample_ratio,
            importance_sample_ratio=config.importance_sample_ratio,
        )
        self.post_init()
        self.batch_norm_folded = False

    def fold_batch_norm(self) -> "PEMForUniversalSegmentation":
        """Optimise the model for inference: fold BatchNorm layers into the convolutions before them (backbone and
        pixel decoder), which saves a pass over every feature map, and store the convolution weights in channels_last,
        the layout of the features, which saves converting them on every call. Outputs stay equal up to float rounding.
        The folded model is for inference only: it can no longer be trained or saved. Returns the model, in eval
        mode."""
        self.eval()
        fold_batch_norm(self)
        self.to(memory_format=torch.channels_last)  # 4-D parameters only
        self.batch_norm_folded = True
        return self

    def train(self, mode: bool = True) -> "PEMForUniversalSegmentation":
        if mode and getattr(self, "batch_norm_folded", False):
            raise ValueError(
                "This model's BatchNorm layers were folded for inference (fold_batch_norm()); it cannot be trained. "
                "Load the checkpoint again to train."
            )
        return super().train(mode)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self.batch_norm_folded:
            raise ValueError(
                "This model's BatchNorm layers were folded for inference (fold_batch_norm()); its weights no longer "
                "match the PEM architecture. Save the model before folding."
            )
        return super().save_pretrained(save_directory, *args, **kwargs)

    def forward(
        self,
        pixel_values: Tensor,
        mask_labels: list[Tensor] | None = None,
        class_labels: list[Tensor] | None = None,
        pixel_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PEMForUniversalSegmentationOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised, padded images (see [`PEMImageProcessor`]).
        mask_labels (`list[torch.Tensor]`, *optional*):
            Per image, binary target masks of shape `(num_targets, height, width)` (any resolution).
        class_labels (`list[torch.LongTensor]`, *optional*):
            Per image, the class index of each target mask, shape `(num_targets,)`.
        pixel_mask (`torch.LongTensor`, *optional*):
            1 on image pixels, 0 on padding. The model ignores it (like the official one), and returns it in the
            output for post-processing.
        output_auxiliary_logits (`bool`, *optional*):
            Return the predictions of the learnable queries and of every decoder layer but the last.

        Example:

        ```python
        >>> import torch
        >>> from transformers_pem import PEMConfig, PEMForUniversalSegmentation
        >>> model = PEMForUniversalSegmentation(PEMConfig.from_preset("pem-stdc1-cityscapes-semantic")).eval()
        >>> outputs = model(torch.randn(1, 3, 256, 512))
        >>> outputs.class_queries_logits.shape, outputs.masks_queries_logits.shape
        (torch.Size([1, 100, 20]), torch.Size([1, 100, 64, 128]))
        ```
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_auxiliary_logits = (
            output_auxiliary_logits if output_auxiliary_logits is not None else self.config.output_auxiliary_logits
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (mask_labels is None) != (class_labels is None):
            raise ValueError("Pass both `mask_labels` and `class_labels` to compute the loss, or neither.")

        # The auxiliary (earlier) predictions are only computed at full resolution when they are needed.
        needs_auxiliary = bool(output_auxiliary_logits) or (mask_labels is not None and self.config.use_auxiliary_loss)
        outputs = self.model(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_intermediate_masks=needs_auxiliary,
            return_dict=True,
        )
        masks_logits = outputs.masks_queries_logits
        if needs_auxiliary:
            class_logits = [self.class_predictor(states) for states in outputs.transformer_decoder_intermediate_states]
            auxiliary_logits = [
                {"class_queries_logits": classes, "masks_queries_logits": masks}
                for classes, masks in zip(class_logits[:-1], masks_logits[:-1])
            ]
        else:
            class_logits = [self.class_predictor(outputs.transformer_decoder_intermediate_states[-1])]
            auxiliary_logits = None

        loss, loss_dict = None, None
        if mask_labels is not None:
            loss_dict = self.criterion(
                masks_queries_logits=masks_logits[-1],
                class_queries_logits=class_logits[-1],
                mask_labels=mask_labels,
                class_labels=class_labels,
                auxiliary_predictions=auxiliary_logits if self.config.use_auxiliary_loss else None,
            )
            loss = self.criterion.weighted_sum(loss_dict)

        output = PEMForUniversalSegmentationOutput(
            loss=loss,
            loss_dict=loss_dict,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=masks_logits[-1],
            auxiliary_logits=auxiliary_logits if output_auxiliary_logits else None,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=outputs.pixel_decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=outputs.transformer_decoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            pixel_decoder_hidden_states=outputs.pixel_decoder_hidden_states,
            transformer_decoder_hidden_states=outputs.transformer_decoder_hidden_states,
            pixel_mask=pixel_mask,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["PEMForUniversalSegmentation", "PEMModel", "PEMPreTrainedModel"]
