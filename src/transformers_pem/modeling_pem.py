"""PyTorch PEM (Prototype-based Efficient MaskFormer, Cavagnero et al., CVPR 2024)."""

import copy
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.models.auto import modeling_auto
from transformers.models.resnet.modeling_resnet import (
    ResNetConvLayer,
    ResNetShortCut,
)
from transformers.utils import ModelOutput

from .configuration_pem import MASK_STRIDE, SIZE_DIVISOR, PEMConfig
from .loss_pem import PEMLoss
from .modeling_stdc import STDCConvLayer
from .pixel_decoder_pem import (
    PEMContextModulation,
    PEMConvNormReLU,
    PEMDeformableLayer,
    PEMModulatedDeformConv,
    PEMPixelLevelModule,
)
from .transformer_decoder_pem import (
    PEMDecoderLayer,
    PEMMaskEmbedder,
    PEMPrototypeCrossAttention,
    PEMSelfAttention,
    PEMTransformerDecoder,
)


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
    prototype_indices (`tuple(torch.LongTensor)`, *optional*):
        The token each head of each query selected as its prototype in PEM-CA, per decoder layer: tensors of shape
        `(batch_size, num_attention_heads, num_queries)`, indices into the flattened (row-major) pixel-decoder level
        the layer attends to (layer `i`: stride `32 / 2 ** (i % 3)` of the padded input). Returned with
        `output_prototype_indices=True`; `visualization.prototypes.prototype_locations` turns them into pixel
        positions.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Self-attention weights of every decoder layer, `(batch_size, num_attention_heads, num_queries, num_queries)`,
        returned with `output_attentions=True`. PEM-CA selects one prototype token per head instead of weighting all
        tokens: its selections are `prototype_indices`.
    """

    encoder_last_hidden_state: torch.FloatTensor | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor] | None = None
    transformer_decoder_intermediate_states: tuple[torch.FloatTensor] | None = None
    masks_queries_logits: tuple[torch.FloatTensor] | None = None
    prototype_indices: tuple[torch.LongTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None


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
    prototype_indices (`tuple(torch.LongTensor)`, *optional*):
        See [`PEMModelOutput`]; returned with `output_prototype_indices=True`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        See [`PEMModelOutput`]; returned with `output_attentions=True`.
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
    prototype_indices: tuple[torch.LongTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None
    pixel_mask: torch.LongTensor | None = None


# The image-segmentation pipeline checks the model class against transformers' static name tables only (not the Auto
# registrations) and logs an error for any other class. Listed there, PEM and its exported runtime models
# (`deploy.onnx_model`, `deploy.openvino_model`) pass, also under trust_remote_code (this module is then the
# checkpoint's own copy); the lazy Auto mappings never import a model type that is missing from transformers' own
# config table, so nothing else reads the entry.
modeling_auto.MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES.setdefault(
    "pem", ("PEMForUniversalSegmentation", "PEMOnnxModel", "PEMOpenVINOModel")
)

# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


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


class PEMPreTrainedModel(PreTrainedModel):
    config: PEMConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The decoder's self-attention runs scaled_dot_product_attention unless its weights are asked for (see
    # PEMDecoderLayer); its backbone blocks, pixel-decoder blocks and decoder layers are checkpointing layers.
    _supports_sdpa = True
    supports_gradient_checkpointing = True
    # Blocks whose parts must share a device under `device_map`: a residual sum, or PEM-CA's memory and queries.
    _no_split_modules = [
        "PEMDecoderLayer",
        "PEMDeformableLayer",
        "STDCCatBottleneck",
        "STDCAddBottleneck",
        "PEMResNetStage",
        "TimmBackbone",  # timm's blocks have many names: a timm backbone stays whole
    ]

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        """transformers' switch for the checkpointing layers; a timm backbone is checkpointed by timm itself (its
        `set_grad_checkpointing`, which updates BatchNorm statistics again when it recomputes)."""
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        for module in self.modules():
            timm_model = getattr(module, "_backbone", None)
            if type(module).__name__ == "TimmBackbone" and hasattr(timm_model, "set_grad_checkpointing"):
                timm_model.set_grad_checkpointing(enable)

    def set_attn_implementation(self, attn_implementation: str | dict) -> None:
        """Sets the decoder's self-attention implementation (`"eager"` or `"sdpa"`), and the backbone's where it has
        one: attention-free backbones (STDC, transformers' ResNet) refuse any request but eager and keep their own."""
        if isinstance(attn_implementation, str):
            pixel_level_module = next(m for m in self.modules() if isinstance(m, PEMPixelLevelModule))
            encoder = pixel_level_module.encoder
            try:
                encoder._check_and_adjust_attn_implementation(attn_implementation, is_init_check=False)
            except ValueError:
                attn_implementation = {"": attn_implementation, "backbone_config": encoder.config._attn_implementation}
        super().set_attn_implementation(attn_implementation)

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
        elif isinstance(module, PEMSelfAttention):
            init.xavier_uniform_(module.in_proj_weight, gain=self.config.init_xavier_std)
            init.xavier_uniform_(module.out_proj.weight, gain=self.config.init_xavier_std)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, PEMDecoderLayer):
            init.xavier_uniform_(module.fc1.weight, gain=self.config.init_xavier_std)
            init.xavier_uniform_(module.fc2.weight, gain=self.config.init_xavier_std)
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
        else:
            super()._init_weights(module)


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
        output_prototype_indices: bool = False,
        output_attentions: bool | None = None,
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
        output_prototype_indices (`bool`, *optional*, defaults to `False`):
            Return the prototype token each head of each query selected in every decoder layer.
        output_attentions (`bool`, *optional*):
            Return the self-attention weights of every decoder layer.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        _check_pixel_values(pixel_values, self.config, self.dtype)

        # The top-down path adds 2x-upsampled coarse features to finer ones, so the input must be a multiple of
        # SIZE_DIVISOR: pad with zeros at the bottom/right (as the official ImageList does) and crop the masks back.
        height, width = pixel_values.shape[-2:]
        pad_height, pad_width = -height % SIZE_DIVISOR, -width % SIZE_DIVISOR
        if pad_height or pad_width:
            pixel_values = F.pad(pixel_values, (0, pad_width, 0, pad_height))
        pixel_level_outputs = self.pixel_level_module(pixel_values, output_hidden_states)
        decoder_outputs = self.transformer_module(
            list(pixel_level_outputs.decoder_hidden_states),
            pixel_level_outputs.decoder_last_hidden_state,
            output_intermediate_masks=output_intermediate_masks,
            output_attentions=output_attentions,
        )
        masks_queries_logits = decoder_outputs.masks_queries_logits
        if pad_height or pad_width:
            mask_height, mask_width = math.ceil(height / MASK_STRIDE), math.ceil(width / MASK_STRIDE)
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
            prototype_indices=decoder_outputs.prototype_indices if output_prototype_indices else None,
            attentions=decoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


def _check_pixel_values(pixel_values: Tensor, config: PEMConfig, dtype: torch.dtype) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[0] == 0:
        raise ValueError(
            "pixel_values must be a non-empty 4-D tensor (batch_size, channels, height, width); got "
            f"{getattr(pixel_values, 'shape', type(pixel_values))}. Use PEMImageProcessor to prepare images."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be a float tensor of normalised images; got dtype {pixel_values.dtype}. Use "
            "PEMImageProcessor to rescale and normalise images."
        )
    if pixel_values.dtype != dtype and not torch.is_autocast_enabled(pixel_values.device.type):
        raise ValueError(
            f"pixel_values has dtype {pixel_values.dtype} but the model's weights are {dtype}: pass "
            "`pixel_values.to(model.dtype)`."
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
        # Inference (eval mode, no gradients) runs a private copy with BatchNorm folded: see `_inference_model`.
        self.fold_for_inference = True
        self._folded_copy: tuple[tuple, PEMForUniversalSegmentation] | None = None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if module is self:
            _default_init(self.class_predictor)  # PyTorch's default initialisation, as the official class head
        else:
            super()._init_weights(module)

    def fold_batch_norm(self) -> "PEMForUniversalSegmentation":
        """Optimise the model for inference: fold BatchNorm layers into the convolutions before them (backbone and
        pixel decoder), which saves a pass over every feature map, and store the convolution weights in channels_last,
        the layout of the features, which saves converting them on every call. Outputs stay equal up to float rounding.
        The folded model is for inference only: it can no longer be trained or saved. Returns the model, in eval
        mode."""
        self.eval()
        self._folded_copy = None
        fold_batch_norm(self)
        self.to(memory_format=torch.channels_last)  # 4-D parameters only
        self.batch_norm_folded = True
        return self

    def _inference_model(self) -> "PEMForUniversalSegmentation | None":
        """The model that runs this forward pass in its place, or None: in eval mode without gradients (pipelines,
        `predict`, evaluation), a copy of this model with BatchNorm folded (`fold_batch_norm`): faster, and equal up
        to float rounding. The copy is made at the first such call and again whenever a parameter or buffer of this
        model has changed (training step, `load_state_dict`, `.to()`); this model itself is never changed, so it
        still trains, saves and reloads its unfolded weights. It costs a second copy of the weights: set
        `fold_for_inference = False` to run this model as it is."""
        if not self.fold_for_inference:
            self._folded_copy = None  # frees the copy
            return None
        if (
            self.training
            or torch.is_grad_enabled()
            or self.batch_norm_folded
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
        ):
            return None
        key = tuple(
            (tensor.data_ptr(), 0 if tensor.is_inference() else tensor._version, tensor.dtype, tensor.device)
            for tensor in itertools.chain(self.parameters(), self.buffers())
        )
        if self._folded_copy is None or self._folded_copy[0] != key:
            self._folded_copy = None  # not deep-copied into the new copy
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in any mode later
                folded = copy.deepcopy(self).fold_batch_norm()
            self._folded_copy = (key, folded)
        return self._folded_copy[1]

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
        output_prototype_indices: bool = False,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PEMForUniversalSegmentationOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Normalised, padded images (see [`PEMImageProcessor`]).
        mask_labels (`list[torch.Tensor]` or `torch.Tensor`, *optional*):
            Per image, binary target masks of shape `(num_targets, height, width)`, the size of `pixel_values`; or
            one tensor `(batch_size, num_targets, height, width)` when every image has the same number of targets.
        class_labels (`list[torch.LongTensor]` or `torch.LongTensor`, *optional*):
            Per image, the class index of each target mask, shape `(num_targets,)`; or one tensor
            `(batch_size, num_targets)`.
        pixel_mask (`torch.LongTensor`, *optional*):
            1 on image pixels, 0 on padding. The model ignores it (like the official one), and returns it in the
            output for post-processing.
        output_auxiliary_logits (`bool`, *optional*):
            Return the predictions of the learnable queries and of every decoder layer but the last.
        output_prototype_indices (`bool`, *optional*, defaults to `False`):
            Return the prototype token each head of each query selected in every decoder layer (see
            [`PEMModelOutput`]; `visualization.prototypes.draw_prototypes` draws them).
        output_attentions (`bool`, *optional*):
            Return the self-attention weights of every decoder layer.

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
        if mask_labels is None and (folded := self._inference_model()) is not None:
            return folded(
                pixel_values,
                pixel_mask=pixel_mask,
                output_hidden_states=output_hidden_states,
                output_auxiliary_logits=output_auxiliary_logits,
                output_prototype_indices=output_prototype_indices,
                output_attentions=output_attentions,
                return_dict=return_dict,
                **kwargs,
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_auxiliary_logits = (
            output_auxiliary_logits if output_auxiliary_logits is not None else self.config.output_auxiliary_logits
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (mask_labels is None) != (class_labels is None):
            raise ValueError("Pass both `mask_labels` and `class_labels` to compute the loss, or neither.")
        # Stacked targets (as Mask2Former accepts them) are the per-image lists the criterion takes.
        if isinstance(mask_labels, Tensor):
            mask_labels = list(mask_labels)
        if isinstance(class_labels, Tensor):
            class_labels = list(class_labels)
        for index, masks in enumerate(mask_labels if mask_labels is not None else []):
            # The loss samples masks at relative coordinates, so a transposed or resized mask would be silently wrong.
            if isinstance(masks, Tensor) and masks.dim() == 3 and masks.shape[-2:] != pixel_values.shape[-2:]:
                raise ValueError(
                    f"mask_labels[{index}] has size {tuple(masks.shape[-2:])} but pixel_values has size "
                    f"{tuple(pixel_values.shape[-2:])}: masks must cover the (padded) image pixel for pixel, as "
                    "PEMImageProcessor returns them."
                )

        # The auxiliary (earlier) predictions are only computed at full resolution when they are needed.
        needs_auxiliary = bool(output_auxiliary_logits) or (mask_labels is not None and self.config.use_auxiliary_loss)
        outputs = self.model(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_intermediate_masks=needs_auxiliary,
            output_prototype_indices=output_prototype_indices,
            output_attentions=output_attentions,
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
            prototype_indices=outputs.prototype_indices,
            attentions=outputs.attentions,
            pixel_mask=pixel_mask,
        )
        return output if return_dict else output.to_tuple()


# ---------------------------------------------------------------------------------------------------------------------
# Inference optimisation
# ---------------------------------------------------------------------------------------------------------------------

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
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
            transpose=isinstance(conv, nn.ConvTranspose2d),
        )

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


__all__ = ["PEMForUniversalSegmentation", "PEMModel", "PEMPreTrainedModel"]
