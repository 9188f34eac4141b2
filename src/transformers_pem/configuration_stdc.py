"""STDC (Short-Term Dense Concatenate network) backbone configuration."""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin


@strict
class STDCConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an STDC backbone ([`STDCBackbone`]), the network of "Rethinking BiSeNet for Real-time Semantic
    Segmentation" (Fan et al., CVPR 2021) as used by PEM. Defaults build STDC1 as in the official PEM code; pass
    `layers=[4, 5, 3]` for STDC2.

    The network has five stages: `stem` (stride 2, `base_channels // 2` channels), `stage1` (stride 4,
    `base_channels`), `stage2` (stride 8, `4 * base_channels`), `stage3` (stride 16, `8 * base_channels`) and
    `stage4` (stride 32, `16 * base_channels`). `stage1`..`stage4` are the official `res2`..`res5` features.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        base_channels (`int`, *optional*, defaults to 64):
            Width of `stage1`; every other width is a multiple of it. The official models use 64.
        layers (`list[int]`, *optional*, defaults to `[2, 2, 2]`):
            Number of bottleneck blocks in `stage2`, `stage3` and `stage4`: `[2, 2, 2]` is STDC1 (STDCNet813),
            `[4, 5, 3]` is STDC2 (STDCNet1446).
        block_num (`int`, *optional*, defaults to 4):
            Number of convolutions in each bottleneck block (at least 2).
        block_type (`str`, *optional*, defaults to `"cat"`):
            Bottleneck type: `"cat"` (the official choice, outputs are concatenated) or `"add"` (concatenated outputs
            plus a residual connection).
        use_conv_last (`bool`, *optional*, defaults to `False`):
            Apply a 1x1 conv-BN-ReLU with `max(1024, 16 * base_channels)` output channels to the `stage4` output.
        out_features (`list[str]`, *optional*):
            Stages to output, from `["stem", "stage1", "stage2", "stage3", "stage4"]`. Defaults to
            `["stage1", "stage2", "stage3", "stage4"]` (strides 4, 8, 16, 32) unless `out_indices` is given.
        out_indices (`list[int]`, *optional*):
            Indices of the stages to output, an alternative to `out_features`.

    Example:

    ```python
    >>> from transformers_pem import STDCBackbone, STDCConfig

    >>> config = STDCConfig(layers=[4, 5, 3])  # STDC2
    >>> backbone = STDCBackbone(config)
    >>> backbone.channels
    [64, 256, 512, 1024]
    ```
    """

    model_type = "stdc"
    block_types: ClassVar[tuple[str, ...]] = ("cat", "add")

    num_channels: int = 3
    base_channels: int = 64
    layers: list[int] | tuple[int, ...] = (2, 2, 2)
    block_num: int = 4
    block_type: str = "cat"
    use_conv_last: bool = False

    def __post_init__(self, **kwargs):
        self.layers = list(self.layers)
        self._check_architecture()
        self.stage_names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features = ["stage1", "stage2", "stage3", "stage4"]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)

    def _check_architecture(self):
        if self.num_channels < 1:
            raise ValueError(f"`num_channels` must be positive, got {self.num_channels}.")
        if len(self.layers) != 3 or any(num_blocks < 1 for num_blocks in self.layers):
            raise ValueError(
                f"`layers` must give the number of blocks (at least 1) of the 3 bottleneck stages, e.g. [2, 2, 2] "
                f"for STDC1 or [4, 5, 3] for STDC2; got {self.layers}."
            )
        if self.block_num < 2:
            raise ValueError(f"`block_num` must be at least 2, got {self.block_num}.")
        if self.block_type not in self.block_types:
            raise ValueError(f"`block_type` must be one of {self.block_types}, got {self.block_type!r}.")
        # The stem halves `base_channels`; a block of width C splits it into C/2, C/4, ..., C/2**(block_num - 1)
        # twice, and the narrowest block has C = 4 * base_channels.
        divisor = 2 ** max(self.block_num - 1, 1)
        if self.base_channels < 2 or self.base_channels % 2 or (4 * self.base_channels) % divisor:
            raise ValueError(
                f"`base_channels` must be even and 4 * base_channels divisible by {divisor} (2**(block_num - 1)) so "
                f"that every bottleneck split is exact; got base_channels={self.base_channels}, "
                f"block_num={self.block_num}."
            )


__all__ = ["STDCConfig"]
