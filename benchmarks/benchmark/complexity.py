"""Parameters and GMACs per component (fvcore, with handles for the ops it does not count)."""

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from transformers_pem.modeling_pem import PEMModulatedDeformConv

from .workloads import post_process

# Module names (the same in PEMForUniversalSegmentation and Mask2FormerForUniversalSegmentation) of each component.
COMPONENTS = {
    "backbone": ("model.pixel_level_module.encoder",),
    "pixel_decoder": ("model.pixel_level_module.decoder",),
    "transformer_decoder": ("model.transformer_module", "class_predictor"),
}


# Ops without multiply-adds (elementwise ops, reductions, comparisons, pooling): not counted, as in detectron2's
# `analyze_model`, and declared so that `uncounted_ops` lists only ops whose multiply-adds would be missing.
IGNORED_OPS = (
    "aten::_unique2", "aten::add", "aten::add_", "aten::addcmul", "aten::all", "aten::argmax", "aten::avg_pool2d",
    "aten::clamp_min", "aten::maximum", "aten::minimum",
    "aten::cos", "aten::div", "aten::expand_as", "aten::linalg_vector_norm", "aten::linspace", "aten::lt",
    "aten::masked_fill", "aten::masked_fill_", "aten::max_pool2d", "aten::mean", "aten::meshgrid", "aten::mul",
    "aten::mul_", "aten::ne", "aten::numel", "aten::pow", "aten::repeat", "aten::repeat_interleave", "aten::rsub",
    "aten::sigmoid", "aten::sigmoid_", "aten::sin", "aten::softmax", "aten::sub", "aten::sum", "aten::where",
)  # fmt: skip


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters in total and per component (backbone, pixel decoder, transformer decoder with the class head)."""
    counts = {"total": sum(parameter.numel() for parameter in model.parameters())}
    for component, prefixes in COMPONENTS.items():
        counts[component] = sum(
            parameter.numel()
            for name, parameter in model.named_parameters()
            if any(name.startswith(prefix + ".") for prefix in prefixes)
        )
    return counts


def _deform_conv2d_macs(inputs: list, outputs: list) -> int:
    """`torchvision::deform_conv2d(input, weight, offset, mask, ...)`: like a dense convolution, one multiply-add per
    output element, input channel (of its group) and kernel tap, plus one multiply per sampled value for the DCNv2
    modulation when a mask is given. The bilinear sampling is not counted."""
    from fvcore.nn.jit_handles import get_shape

    batch_size, out_channels, out_height, out_width = get_shape(outputs[0])
    _, in_channels_per_group, kernel_height, kernel_width = get_shape(inputs[1])
    taps = kernel_height * kernel_width
    macs = batch_size * out_height * out_width * out_channels * in_channels_per_group * taps
    if len(get_shape(inputs[3])) == 4:  # a modulation mask (B, offset_groups * taps, H_out, W_out)
        macs += batch_size * out_height * out_width * get_shape(inputs[0])[1] * taps
    return macs


def _mm_macs(inputs: list, outputs: list) -> int:
    """`mm(a (n, m), b (m, p))`, also with `out=` (a third input, which fvcore's own handle rejects): n * m * p."""
    from fvcore.nn.jit_handles import get_shape

    rows, inner = get_shape(inputs[0])
    return rows * inner * get_shape(inputs[1])[1]


def _embedding_bag_macs(inputs: list, outputs: list) -> int:
    """`embedding_bag(weight (N, C), indices (bags, n), ..., per_sample_weights)` in sum mode: one multiply-add per
    gathered value (PEM's deformable convolution gathers the 4 bilinear corners of every tap this way)."""
    from fvcore.nn.jit_handles import get_shape

    num_indices = 1
    for size in get_shape(inputs[1]):
        num_indices *= size
    return num_indices * get_shape(inputs[0])[1]


def _scaled_dot_product_attention_macs(inputs: list, outputs: list) -> int:
    """`query @ key^T`, then `weights @ value`: (..., Lq, D) x (..., Lk, D) and (..., Lq, Lk) x (..., Lk, Dv)."""
    from fvcore.nn.jit_handles import get_shape

    query, key, value = (get_shape(tensor) for tensor in inputs[:3])
    batch = 1
    for size in query[:-2]:
        batch *= size
    return batch * query[-2] * key[-2] * (query[-1] + value[-1])


def _baddbmm_macs(inputs: list, outputs: list) -> int:
    """`baddbmm(input, batch1 (b, n, m), batch2 (b, m, p))`: b * n * m * p (adding `input` is not counted)."""
    from fvcore.nn.jit_handles import get_shape

    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


# fvcore handles of the ops with multiply-adds that fvcore does not count by default.
MAC_HANDLES = {
    "torchvision::deform_conv2d": _deform_conv2d_macs,
    "aten::scaled_dot_product_attention": _scaled_dot_product_attention_macs,
    "aten::baddbmm": _baddbmm_macs,
    "aten::embedding_bag": _embedding_bag_macs,
    "aten::mm": _mm_macs,
}


class _ForwardAndPostProcess(nn.Module):
    """Tensor-only wrapper for tracing: the logits and the post-processed maps."""

    def __init__(self, model: nn.Module, processor: Any):
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(pixel_values=pixel_values)
        maps = post_process(self.processor, outputs, *pixel_values.shape[-2:])
        return outputs.class_queries_logits, outputs.masks_queries_logits, torch.stack(maps)


def count_gmacs(model: nn.Module, processor: Any, pixel_values: Tensor) -> dict[str, Any]:
    """GMACs of a forward pass in total and per component, of the semantic post-processing, and of PEM's deformable
    convolutions (part of the pixel decoder, but left out of the paper's count: detectron2's deformable convolution is
    a Python autograd function that fvcore cannot trace). `uncounted_ops` (name -> calls) lists the traced ops that
    have no handle."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fvcore uses the deprecated torch.jit.script at import
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise ValueError("Counting GMACs needs fvcore: `pip install fvcore`, or pass --no-gmacs.") from None
    # The model as it is: its inference would run a folded copy, which is not one of its modules.
    folds, model.fold_for_inference = getattr(model, "fold_for_inference", False), False
    analysis = FlopCountAnalysis(_ForwardAndPostProcess(model, processor).eval(), (pixel_values,))
    analysis.set_op_handle(**dict.fromkeys(IGNORED_OPS))
    analysis.set_op_handle(**MAC_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        by_module = analysis.by_module()
        uncounted = dict(analysis.unsupported_ops())
    model.fold_for_inference = folds
    gmacs = {"total": by_module["model"] / 1e9}
    for component, prefixes in COMPONENTS.items():
        gmacs[component] = sum(by_module.get(f"model.{prefix}", 0) for prefix in prefixes) / 1e9
    gmacs["post_processing"] = (by_module[""] - by_module["model"]) / 1e9
    gmacs["deform_conv"] = (
        sum(
            by_module.get(f"model.{name}", 0)
            for name, module in model.named_modules()
            if isinstance(module, PEMModulatedDeformConv)
        )
        / 1e9
    )
    return {"gmacs": gmacs, "uncounted_ops": uncounted}
