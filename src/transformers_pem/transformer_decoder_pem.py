"""PEM's transformer decoder: queries refined by prototype-based masked cross-attention (PEM-CA) over the
pixel-decoder levels, and the mask predictions after every layer."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from .checkpointing_pem import PEMCheckpointingLayer
from .configuration_pem import PEMConfig


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
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        The self-attention weights of every layer, `(batch_size, num_heads, num_queries, num_queries)`, returned with
        `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    intermediate_states: tuple[torch.FloatTensor] | None = None
    masks_queries_logits: tuple[torch.FloatTensor] | None = None
    prototype_indices: tuple[torch.LongTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None


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
                # -inf, including a fully masked query, whose tokens all tie and which selects token 0. Built by
                # conversion: on CPU, `masked_fill_` and `torch.where` with a boolean mask are much slower.
                mask_bias = masked.to(memory.dtype).mul_(-1e30)
            # Scored in chunks of tokens, so that the (B, h, Q, chunk) scores are reused memory rather than one new
            # (B, h, Q, N) tensor. `max` returns the first maximum's index like `argmax` (and is faster on CPU), and
            # the strict `>` keeps the earlier chunk on ties: the result is the argmax over all tokens, and a fully
            # masked query (all -inf) selects token 0, as officially.
            # An exported graph (torch.export, ONNX) scores all tokens at once: its token count is symbolic, and the
            # chunk loop would be traced for the example input's count only.
            exporting = torch.compiler.is_exporting()
            chunk_size = num_tokens if exporting else self.selection_chunk_size
            best_scores, indices = None, None
            for start in [0] if exporting else range(0, num_tokens, chunk_size):
                end = start + chunk_size
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


class PEMSelfAttention(nn.Module):
    """Multi-head self-attention of the queries, with `nn.MultiheadAttention`'s parameters (and state-dict keys, as
    the official layer has them): `in_proj_weight`, `in_proj_bias`, `out_proj`.

    `"sdpa"` computes it with `scaled_dot_product_attention` (what `nn.MultiheadAttention` runs without weights);
    `"eager"` step by step as `nn.MultiheadAttention` does with `need_weights=True` (the official path: scale the
    queries, `q @ k^T`, softmax, `@ v`) and returns the weights, which stay part of the graph (their gradients exist).
    """

    def __init__(self, hidden_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_dim))
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)

    def forward(
        self, query_key: Tensor, value: Tensor, attn_implementation: str = "sdpa"
    ) -> tuple[Tensor, Tensor | None]:
        """query_key (B, Q, C): queries with their position embedding; value (B, Q, C). Returns the attended values
        (B, Q, C) and, with "eager", the weights (B, heads, Q, Q)."""
        batch_size, num_queries, channels = value.shape
        head_dim = channels // self.num_heads
        weight_qk, weight_v = self.in_proj_weight.split([2 * channels, channels])
        bias_qk, bias_v = self.in_proj_bias.split([2 * channels, channels])
        query, key = F.linear(query_key, weight_qk, bias_qk).chunk(2, dim=-1)
        value = F.linear(value, weight_v, bias_v)
        # (B, Q, C) -> (B, heads, Q, head_dim)
        query, key, value = (
            tensor.view(batch_size, num_queries, self.num_heads, head_dim).transpose(1, 2)
            for tensor in (query, key, value)
        )
        if attn_implementation == "eager":
            weights = torch.matmul(query * head_dim**-0.5, key.transpose(-2, -1)).softmax(dim=-1)
            attended = torch.matmul(weights, value)
        else:
            weights, attended = None, F.scaled_dot_product_attention(query, key, value)
        attended = attended.transpose(1, 2).reshape(batch_size, num_queries, channels)
        return self.out_proj(attended), weights


class PEMDecoderLayer(PEMCheckpointingLayer):
    """PEM-CA, then self-attention, then a feed-forward network (pre- or post-norm). The self-attention follows
    `config._attn_implementation` ("sdpa" by default, or "eager"); `output_attentions=True` runs it eagerly and returns
    its weights."""

    def __init__(self, config: PEMConfig):
        super().__init__()
        self.config = config
        hidden_dim = config.hidden_dim
        self.pre_norm = config.pre_norm
        self.cross_attn = PEMPrototypeCrossAttention(hidden_dim, config.num_attention_heads)
        self.self_attn = PEMSelfAttention(hidden_dim, config.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, config.dim_feedforward)
        self.fc2 = nn.Linear(config.dim_feedforward, hidden_dim)
        self.final_layer_norm = nn.LayerNorm(hidden_dim)

    def forward(
        self,
        hidden_states: Tensor,
        memory: Tensor,
        query_position: Tensor,
        mask_logits: Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """memory (B, C, H, W) with its position embedding added; see [`PEMPrototypeCrossAttention`]. Returns the
        queries (B, Q, C), the prototype indices (B, heads, Q) and, with `output_attentions`, the self-attention
        weights (B, heads, Q, Q)."""
        hidden_states, indices = self.cross_attn(hidden_states, memory, query_position, mask_logits)

        implementation = "eager" if output_attentions else self.config._attn_implementation
        if self.pre_norm:
            normed = self.self_attn_layer_norm(hidden_states)
            attended, weights = self.self_attn(normed + query_position, normed, implementation)
            hidden_states = hidden_states + attended
            hidden_states = hidden_states + self.fc2(F.relu(self.fc1(self.final_layer_norm(hidden_states))))
        else:
            attended, weights = self.self_attn(hidden_states + query_position, hidden_states, implementation)
            hidden_states = self.self_attn_layer_norm(hidden_states + attended)
            hidden_states = self.final_layer_norm(hidden_states + self.fc2(F.relu(self.fc1(hidden_states))))
        return hidden_states, indices, weights if output_attentions else None


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
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        output_intermediate_masks: bool = True,
        output_attentions: bool = False,
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
        attentions = []
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
            hidden_states, indices, weights = self.layers[index](
                hidden_states, memories[level], query_position, attention_mask, output_attentions=output_attentions
            )
            all_hidden_states.append(hidden_states)
            prototype_indices.append(indices)
            attentions.append(weights)

        return PEMTransformerDecoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states),
            intermediate_states=tuple(intermediate_states),
            masks_queries_logits=tuple(masks_queries_logits),
            prototype_indices=tuple(prototype_indices),
            attentions=tuple(attentions) if output_attentions else None,
        )
