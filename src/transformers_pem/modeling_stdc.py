"""STDC backbone (Fan et al., "Rethinking BiSeNet for Real-time Semantic Segmentation", CVPR 2021), as used by PEM.

The module tree and parameter names follow the official `STDCNet` (`features.{i}.conv/bn`,
`features.{i}.conv_list.{j}.conv/bn`, `features.{i}.avd_layer.{0,1}`, `features.{i}.skip.*` for `"add"` blocks), so an
official PEM state dict loads after removing its `backbone.` prefix and dropping the `x2/x4/x8/x16/x32.*` keys, which
repeat the `features.*` tensors under a second name.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput
from transformers.utils import can_return_tuple

from .checkpointing_pem import PEMCheckpointingLayer
from .configuration_stdc import STDCConfig


class STDCConvLayer(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, the official `ConvX`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)  # the BatchNorm output is used only here

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(hidden_states)))


def make_bottleneck_convs(in_channels: int, out_channels: int, block_num: int) -> nn.ModuleList:
    """
    The convolutions of a bottleneck of width `out_channels` (C): a 1x1 conv to C/2, then 3x3 convs down to
    C/4, C/8, ..., the last one keeping its input width, so that their outputs add up to C.
    """
    widths = [out_channels // 2 ** min(idx + 1, block_num - 1) for idx in range(block_num)]
    convs = [STDCConvLayer(in_channels, widths[0], kernel_size=1)]
    convs += [STDCConvLayer(widths[idx - 1], widths[idx]) for idx in range(1, block_num)]
    return nn.ModuleList(convs)


def make_depthwise_downsample(channels: int) -> nn.Sequential:
    """Depthwise 3x3 conv with stride 2, then BatchNorm (the official `avd_layer`)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False), nn.BatchNorm2d(channels)
    )


class STDCCatBottleneck(PEMCheckpointingLayer):
    """
    STDC bottleneck of type "cat": the outputs of the chained convolutions are concatenated. In a stride-2 block the
    first conv output is downsampled by a depthwise conv before the chain and by average pooling for the concatenation.
    """

    def __init__(self, in_channels: int, out_channels: int, block_num: int, stride: int):
        super().__init__()
        self.conv_list = make_bottleneck_convs(in_channels, out_channels, block_num)
        if stride == 2:
            self.avd_layer = make_depthwise_downsample(out_channels // 2)
            self.skip = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.avd_layer = nn.Identity()
            self.skip = nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](hidden_states)  # (B, C/2, H, W)
        hidden_states = self.avd_layer(first)
        outputs = [self.skip(first)]
        for conv in self.conv_list[1:]:
            hidden_states = conv(hidden_states)
            outputs.append(hidden_states)
        return torch.cat(outputs, dim=1)  # (B, C, H/stride, W/stride)


class STDCAddBottleneck(PEMCheckpointingLayer):
    """
    STDC bottleneck of type "add": the concatenated outputs of the chained convolutions plus a residual. In a stride-2
    block the first conv output is downsampled by a depthwise conv and the residual by a depthwise conv + 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, block_num: int, stride: int):
        super().__init__()
        self.conv_list = make_bottleneck_convs(in_channels, out_channels, block_num)
        if stride == 2:
            self.avd_layer = make_depthwise_downsample(out_channels // 2)
            self.skip = nn.Sequential(
                *make_depthwise_downsample(in_channels),
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.avd_layer = nn.Identity()
            self.skip = nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.skip(hidden_states)
        hidden_states = self.avd_layer(self.conv_list[0](hidden_states))
        outputs = [hidden_states]
        for conv in self.conv_list[1:]:
            hidden_states = conv(hidden_states)
            outputs.append(hidden_states)
        return torch.cat(outputs, dim=1) + residual


class STDCPreTrainedModel(PreTrainedModel):
    config: STDCConfig
    base_model_prefix = "stdc"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The bottleneck blocks are checkpointing layers; the two stem convolutions keep their activations.
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class STDCBackbone(BackboneMixin, STDCPreTrainedModel):
    """
    STDC backbone, layer for layer equivalent to the official PEM `STDCNet`. `features` holds, in order, the two
    stride-2 stem convs (`stem`, `stage1`) and the bottleneck blocks of `stage2`, `stage3` and `stage4` (the first
    block of each has stride 2). Outputs the stages in `config.out_features` as `BackboneOutput.feature_maps`.
    """

    has_attentions = False

    def __init__(self, config: STDCConfig):
        super().__init__(config)
        base = config.base_channels
        block_class = STDCCatBottleneck if config.block_type == "cat" else STDCAddBottleneck

        layers = [
            STDCConvLayer(config.num_channels, base // 2, kernel_size=3, stride=2),
            STDCConvLayer(base // 2, base, kernel_size=3, stride=2),
        ]
        in_channels = base
        for stage_idx, num_blocks in enumerate(config.layers):
            out_channels = base * 2 ** (stage_idx + 2)
            for block_idx in range(num_blocks):
                stride = 2 if block_idx == 0 else 1
                layers.append(block_class(in_channels, out_channels, config.block_num, stride))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        # Index in `features` of the last layer of each stage: stem, stage1, stage2, stage3, stage4.
        self.stage_end_indices = [0, 1]
        for num_blocks in config.layers:
            self.stage_end_indices.append(self.stage_end_indices[-1] + num_blocks)

        last_channels = 16 * base
        self.conv_last = None
        if config.use_conv_last:
            last_channels = max(1024, 16 * base)
            self.conv_last = STDCConvLayer(16 * base, last_channels, kernel_size=1)
        self.num_features = [base // 2, base, 4 * base, 8 * base, last_channels]

        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized images. Any size works; stage `k` has size `ceil(height / s)`, `ceil(width / s)` with
                stride `s = 2, 4, 8, 16, 32`.
            output_hidden_states (`bool`, *optional*):
                Also return the outputs of all five stages as `hidden_states`.
            return_dict (`bool`, *optional*):
                Return a [`BackboneOutput`] instead of a tuple.

        Returns:
            [`BackboneOutput`] with `feature_maps`, one tensor per entry of `config.out_features`.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}."
            )

        hidden_states = pixel_values
        stage_outputs = []
        for idx, layer in enumerate(self.features):
            hidden_states = layer(hidden_states)
            if idx in self.stage_end_indices:
                stage_outputs.append(hidden_states)
        if self.conv_last is not None:
            stage_outputs[-1] = self.conv_last(stage_outputs[-1])

        feature_maps = tuple(stage_outputs[self.stage_names.index(name)] for name in self.out_features)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=tuple(stage_outputs))


__all__ = ["STDCBackbone", "STDCPreTrainedModel"]
