"""PEM (Prototype-based Efficient MaskFormer) model configuration."""

import dataclasses
import difflib

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, ResNetConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_stdc import STDCConfig
from .labels_pem import DATASET_LABELS
from .presets_pem import PRESETS, STDC_LAYERS, get_preset

# PEM's input rule: the model zero-pads images (bottom/right) to a multiple of SIZE_DIVISOR, because its top-down
# path adds 2x-upsampled coarse features to finer ones, and predicts masks at stride MASK_STRIDE of the padded input.
SIZE_DIVISOR = 32
MASK_STRIDE = 4


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size the model pads an input of `size` (height, width) to: the next multiples of `SIZE_DIVISOR`."""
    return tuple(-(-length // SIZE_DIVISOR) * SIZE_DIVISOR for length in size)


@strict
class PEMConfig(PreTrainedConfig):
    r"""
    Configuration of a PEM model. Defaults reproduce the official PEM-R50 architecture (the ResNet-50 backbone, a
    128-channel pixel decoder, a 6-layer transformer decoder with 100 queries). The 12 official configurations are
    available as presets: see [`PEMConfig.presets`] and [`PEMConfig.from_preset`].

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Backbone configuration: a `ResNetConfig` (default, ResNet-50), an `STDCConfig` or a `TimmBackboneConfig`.
            It must output four feature maps at strides 4, 8, 16 and 32.
        conv_dim (`int`, *optional*, defaults to 128):
            Channels of the pixel decoder (official `SEM_SEG_HEAD.CONVS_DIM`).
        mask_dim (`int`, *optional*, defaults to 256):
            Channels of the per-pixel mask features (official `SEM_SEG_HEAD.MASK_DIM`).
        hidden_dim (`int`, *optional*, defaults to 256):
            Width of the transformer decoder.
        num_queries (`int`, *optional*, defaults to 100):
            Number of object queries.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the self-attention and of the prototype selection in PEM-CA.
        dim_feedforward (`int`, *optional*, defaults to 2048):
            Hidden size of the decoder feed-forward networks.
        decoder_layers (`int`, *optional*, defaults to 6):
            Transformer decoder layers (official `DEC_LAYERS` minus one: the official count includes the prediction
            from the learnable queries).
        pre_norm (`bool`, *optional*, defaults to `True`):
            Pre-LayerNorm self-attention and FFN.
        enforce_input_projection (`bool`, *optional*, defaults to `True`):
            Always use a 1x1 input projection in front of the decoder, even when `conv_dim == hidden_dim`.
        num_feature_levels (`int`, *optional*, defaults to 3):
            Pixel-decoder levels the decoder cycles through (strides 32, 16, 8).
        ignore_value (`int`, *optional*, defaults to 255):
            Label value ignored in semantic maps.
        no_object_weight (`float`, *optional*, defaults to 0.1):
            Cross-entropy weight of the "no object" class.
        class_weight, mask_weight, dice_weight (`float`, *optional*, defaults to 2.0, 5.0, 5.0):
            Matching costs and loss weights.
        train_num_points (`int`, *optional*, defaults to 12544):
            Points sampled per mask in the loss.
        oversample_ratio (`float`, *optional*, defaults to 3.0):
            Over-sampling of candidate points for uncertainty-based selection.
        importance_sample_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of the points chosen by uncertainty.
        use_auxiliary_loss (`bool`, *optional*, defaults to `True`):
            Supervise the prediction after every decoder layer and the one from the learnable queries.
        object_mask_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic inference: minimum class score of a kept query.
        overlap_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic inference: minimum visible fraction of a query's mask.
        test_topk_per_image (`int`, *optional*, defaults to 100):
            Instance inference: detections kept per image.
        thing_ids (`list[int]`, *optional*):
            Class indices that are "things" (countable instances); the other classes are "stuff". `None` means every
            class is a thing.
        init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers.
        init_xavier_std (`float`, *optional*, defaults to 1.0):
            Gain of the Xavier initialisation of the decoder.
        output_auxiliary_logits (`bool`, *optional*):
            Whether to return the auxiliary predictions.

    Example:

    ```python
    >>> from transformers_pem import PEMConfig, PEMForUniversalSegmentation
    >>> config = PEMConfig.from_preset("pem-stdc1-cityscapes-semantic")
    >>> model = PEMForUniversalSegmentation(config)
    ```
    """

    model_type = "pem"
    # What `Trainer` leaves out of the predictions it hands to `compute_metrics` (see `PEMTrainerMetrics`).
    keys_to_ignore_at_inference = ["loss_dict", "auxiliary_logits"]
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="resnet",
            init_kwargs={"out_features": ["stage1", "stage2", "stage3", "stage4"]},
        ),
    }
    attribute_map = {"hidden_size": "hidden_dim", "num_hidden_layers": "decoder_layers"}

    backbone_config: dict | PreTrainedConfig | None = None
    conv_dim: int = 128
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    num_attention_heads: int = 8
    dim_feedforward: int = 2048
    decoder_layers: int = 6
    pre_norm: bool = True
    enforce_input_projection: bool = True
    num_feature_levels: int = 3
    ignore_value: int = 255
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    use_auxiliary_loss: bool = True
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    test_topk_per_image: int = 100
    thing_ids: list[int] | None = None
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    output_auxiliary_logits: bool | None = None

    def __post_init__(self, **kwargs):
        # STDC is not a transformers model type: resolve it here, so that checkpoints load through
        # `trust_remote_code` in processes that never imported transformers_pem (and so never registered "stdc").
        if isinstance(self.backbone_config, dict) and self.backbone_config.get("model_type") == STDCConfig.model_type:
            self.backbone_config = STDCConfig(**{k: v for k, v in self.backbone_config.items() if k != "model_type"})
        # A label set given as label2id alone is the labels (transformers would replace it with 2 default ones).
        if self.id2label is None and self.label2id:
            self.id2label = {int(index): name for name, index in self.label2id.items()}
        if self.id2label is not None:
            _check_class_indices({int(index) for index in self.id2label}, "id2label")
        super().__post_init__(**kwargs)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        # transformers 5 does not derive label2id from id2label (nor update it with a new label set): keep
        # label2id the inverse of id2label, including when from_pretrained(..., id2label=...) replaces the labels.
        if key in ("id2label", "label2id") and getattr(self, "id2label", None) is not None:
            label2id = {name: int(index) for index, name in self.id2label.items()}
            if getattr(self, "label2id", None) != label2id:
                super().__setattr__("label2id", label2id)

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_dim % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_feature_levels != 3:
            raise ValueError("PEM's pixel decoder provides exactly 3 feature levels; set num_feature_levels=3.")
        if self.thing_ids is not None and any(not 0 <= i < self.num_labels for i in self.thing_ids):
            raise ValueError(f"thing_ids {self.thing_ids} must be class indices in [0, {self.num_labels}).")

    @staticmethod
    def presets() -> list[str]:
        """Names of the 12 official PEM configurations, e.g. `pem-r50-cityscapes-semantic`."""
        return list(PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PEMConfig":
        """Build one of the official configurations (see [`PEMConfig.presets`]) with the dataset's labels.

        Keyword arguments override the preset's fields, e.g. `from_preset("pem-r50-ade20k-semantic", num_queries=50)`.
        """
        preset = get_preset(name)
        known = _init_arguments(cls)
        unknown = sorted(set(overrides) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, 1)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise ValueError(f"Unknown PEMConfig fields {', '.join(hints)}: see PEMConfig's docstring for the fields.")
        out_features = ["stage1", "stage2", "stage3", "stage4"]
        if preset.backbone == "r50":
            backbone_config = ResNetConfig(out_features=out_features)
        else:
            backbone_config = STDCConfig(layers=list(STDC_LAYERS[preset.backbone]), out_features=out_features)
        custom_labels = bool(overrides.keys() & {"id2label", "label2id", "num_labels"})
        settings = {
            "backbone_config": backbone_config,
            # A custom label set (given by any of its three forms): the dataset's labels and thing ids no longer apply.
            "id2label": None
            if custom_labels
            else {index: label.name for index, label in enumerate(DATASET_LABELS[preset.dataset])},
            "thing_ids": None if custom_labels else preset.thing_ids,
        }
        return cls(**{**settings, **overrides})


def _check_class_indices(indices: set[int], argument: str) -> None:
    """Class indices must be 0, 1, ..., N - 1: the model's class logits are indexed by them."""
    if indices != set(range(len(indices))):
        missing = sorted(set(range(max(indices, default=-1) + 1)) - indices)[:5]
        raise ValueError(
            f"{argument} must number the classes 0 to {len(indices) - 1}; got {sorted(indices)[:10]}"
            + (f" (missing {missing})" if missing else "")
            + ": renumber them (a separate map can keep the dataset's own ids)."
        )


def _init_arguments(config_class: type) -> set[str]:
    """What a config of `config_class` takes as keyword arguments: its fields, transformers' common settings and
    their aliases."""
    fields = {field.name for field in dataclasses.fields(config_class)}
    common = {"num_labels", "output_attentions", "attn_implementation", "dtype", "name_or_path"}
    return fields | common | set(config_class.attribute_map)


__all__ = ["PEMConfig"]
