"""PEM's pixel-level module: the backbone and the efficient pixel decoder (CSM-modulated projections and deformable
layers on a top-down path)."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.backbone_utils import load_backbone
from transformers.models.resnet.modeling_resnet import (
    ResNetBasicLayer,
    ResNetBottleNeckLayer,
    ResNetConvLayer,
    ResNetStage,
)
from transformers.utils import ModelOutput, is_torchvision_available

from .checkpointing_pem import PEMCheckpointingLayer
from .configuration_pem import PEMConfig
from .configuration_stdc import STDCConfig
from .modeling_stdc import STDCBackbone

# Only exported graphs call torchvision's operator (see PEMModulatedDeformConv): eager inference and training run
# without torchvision, so a checkpoint's code also loads where it is not installed.
if is_torchvision_available():
    from torchvision.ops import deform_conv2d


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


class PEMConvNormReLU(PEMCheckpointingLayer):
    """Convolution without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(hidden_states)), inplace=True)


class PEMContextModulation(PEMCheckpointingLayer):
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
    (same offset layout, same zero padding; checked in the tests); on CPU it runs on all threads, where torchvision's
    kernel runs on one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.register_parameter("bias", None)  # the official layer has none; set when BatchNorm is folded in

    def forward(self, hidden_states: Tensor, offset: Tensor, modulation: Tensor) -> Tensor:
        """hidden_states (B, C, H, W); offset (B, 2 * k * k, H, W) with channel 2t = dy and 2t + 1 = dx of tap t
        (row-major over the kernel); modulation (B, k * k, H, W). Returns (B, C_out, H, W) in channels_last layout."""
        if torch.compiler.is_exporting():
            # Exported graphs keep torchvision's operator, which ONNX maps to its native `DeformConv`; the gather
            # below would become an ONNX loop that runs orders of magnitude slower.
            if not is_torchvision_available():
                raise ImportError(
                    "Exporting PEM needs torchvision (its deformable convolution): pip install torchvision."
                )
            return deform_conv2d(
                hidden_states, offset, self.weight, self.bias, padding=self.kernel_size // 2, mask=modulation
            )
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


class PEMDeformableLayer(PEMCheckpointingLayer):
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
        if torch.compiler.is_exporting():
            # ONNX Runtime's transposed convolution is several times slower than its convolution, and has no int8
            # kernel: exported graphs compute the same upsampling as a convolution and a pixel shuffle.
            upsampled = _transposed_convolution_as_convolution(hidden_states, self.upsample)
        else:
            upsampled = self.upsample(hidden_states)
        upsampled = F.relu(self.upsample_norm(upsampled), inplace=True)
        return hidden_states, upsampled


# Output row 2m + a (a = 0, 1) of a 4x4 transposed convolution with stride 2 and padding 1 reads input rows m - 1, m
# and m + 1 through these kernel rows (None: not at all); the same holds for columns.
_PHASE_TAPS = ((3, 1, None), (None, 2, 0))


def _transposed_convolution_as_convolution(hidden_states: Tensor, upsample: nn.ConvTranspose2d) -> Tensor:
    """`upsample(hidden_states)` (4x4 kernel, stride 2, padding 1) as one 3x3 convolution to 4x the channels, one
    group per output phase (a, b), followed by a pixel shuffle that interleaves the phases."""
    weight = upsample.weight  # (C_in, C_out, 4, 4)
    zero = weight.new_zeros(weight.shape[1], weight.shape[0])
    phases = []
    for taps_y in _PHASE_TAPS:
        for taps_x in _PHASE_TAPS:
            rows = [
                torch.stack([zero if ty is None or tx is None else weight[:, :, ty, tx].t() for tx in taps_x], dim=-1)
                for ty in taps_y
            ]
            phases.append(torch.stack(rows, dim=-2))  # (C_out, C_in, 3, 3)
    kernel = torch.stack(phases, dim=1).flatten(0, 1)  # (4 * C_out, C_in, 3, 3): channel 4c + 2a + b
    bias = None if upsample.bias is None else upsample.bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(hidden_states, kernel, bias, padding=1), 2)


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


class PEMResNetStage(PEMCheckpointingLayer, ResNetStage):
    """transformers' `ResNetStage` as a checkpointing layer (transformers' ResNet has no activation checkpointing):
    the same module, weights and forward."""

    forward = ResNetStage.forward  # named here, so that the checkpointing wrapper wraps it (not the base's)


class PEMPixelLevelModule(nn.Module):
    """Backbone + pixel decoder."""

    def __init__(self, config: PEMConfig):
        super().__init__()
        backbone_config = config.backbone_config
        # The attention implementation asked of PEM is its decoder's; transformers passes it on to every sub-config.
        # Attention-free backbones (STDC, ResNet, timm) accept only eager when asked, so a request for another one is
        # cleared on the backbone's config: the backbone then takes its own default (sdpa where it has attention).
        if backbone_config._attn_implementation not in (None, "eager"):
            backbone_config._attn_implementation = None
        # STDC is built directly: under trust_remote_code it is not registered with AutoBackbone. Its config may then
        # be an instance of another copy of STDCConfig (transformers loads the config's and the model's code files into
        # different module folders), so it is recognised by its model type.
        if backbone_config.model_type == STDCConfig.model_type:
            if not isinstance(backbone_config, STDCConfig):
                backbone_config = STDCConfig.from_dict(backbone_config.to_dict())
            self.encoder = STDCBackbone(backbone_config)
        else:
            self.encoder = load_backbone(config)
            # transformers' ResNet applies its ReLUs out of place; in place (as in torchvision's ResNet, and safe: each
            # ReLU input is a fresh BatchNorm or residual-sum output) they skip writing a new feature map.
            for module in self.encoder.modules():
                if isinstance(module, (ResNetConvLayer, ResNetBasicLayer, ResNetBottleNeckLayer)):
                    if isinstance(module.activation, nn.ReLU):
                        module.activation.inplace = True
                # The stages become checkpointing layers in place: their class only, so weights and keys are kept.
                if type(module) is ResNetStage:
                    module.__class__ = PEMResNetStage
        self.decoder = PEMPixelDecoder(config, self.encoder.channels)

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> PEMPixelLevelModuleOutput:
        # channels_last is oneDNN's fast convolution layout on CPU and the tensor-core layout on GPU; the convolutions
        # keep it, so every feature map is channels_last.
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        # PEM returns its decoder's attentions only; a backbone config asking for its own is not followed (timm's
        # backbones would refuse it).
        features = list(self.encoder(pixel_values, output_attentions=False).feature_maps)
        mask_features, multi_scale_features = self.decoder(features)
        return PEMPixelLevelModuleOutput(
            encoder_last_hidden_state=features[-1],
            encoder_hidden_states=tuple(features) if output_hidden_states else None,
            decoder_last_hidden_state=mask_features,
            decoder_hidden_states=tuple(multi_scale_features),
        )
