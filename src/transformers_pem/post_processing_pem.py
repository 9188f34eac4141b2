"""PEM's official inference as image-processor post-processing: semantic, panoptic and instance segmentation from
`class_queries_logits` and `masks_queries_logits`, cropped to each image's valid region and resized to its output
size."""

import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import torch
from torch import Tensor, nn
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from .configuration_pem import MASK_STRIDE


def binary_mask_to_rle(mask: torch.Tensor) -> list[int]:
    """
    Run-length encoding of a binary `(height, width)` mask in Mask2Former's format: `[start_1, length_1, start_2,
    length_2, ...]`, with 1-based starts of the runs of ones in the row-major flattened mask.
    """
    pixels = torch.cat([mask.new_zeros(1), mask.flatten(), mask.new_zeros(1)]).to(torch.int8)
    changes = torch.nonzero(pixels[1:] != pixels[:-1]).flatten() + 1
    changes[1::2] -= changes[::2].clone()
    return changes.tolist()


def valid_sizes(pixel_mask: torch.Tensor) -> list[tuple[int, int]]:
    """The `(height, width)` of the valid (top-left, unpadded) region of each image of a `(batch_size, height, width)`
    pixel mask."""
    valid = pixel_mask.bool()
    return list(zip(valid.any(dim=2).sum(dim=1).tolist(), valid.any(dim=1).sum(dim=1).tolist()))


def _padded_and_valid_sizes(
    masks_queries_logits: torch.Tensor, pixel_mask: torch.Tensor | None
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The padded input size and, per image, the size of its unpadded (top-left) region."""
    batch_size, _, mask_height, mask_width = masks_queries_logits.shape
    if pixel_mask is None:
        padded_size = (mask_height * MASK_STRIDE, mask_width * MASK_STRIDE)
        return padded_size, [padded_size] * batch_size
    if pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch_size:
        raise ValueError(
            f"pixel_mask must have shape (batch_size={batch_size}, height, width), got {tuple(pixel_mask.shape)}."
        )
    sizes = valid_sizes(pixel_mask)
    if min(min(size) for size in sizes) == 0:
        raise ValueError("pixel_mask marks no valid pixel for at least one image.")
    return tuple(pixel_mask.shape[-2:]), sizes


def _check_fraction(name: str, value: float, open_interval: bool = False) -> None:
    """A threshold on probabilities or area fractions: in [0, 1], or (0, 1) where both ends would keep or drop all."""
    valid = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0
    if not valid:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}.")


def _resolve_target_sizes(target_sizes, default_sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if target_sizes is None:
        return default_sizes
    if len(target_sizes) != len(default_sizes):
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {len(default_sizes)}: pass one (height, width) each."
        )
    resolved = []
    for size in target_sizes:
        height, width = (int(value) for value in size)
        if height <= 0 or width <= 0:
            raise ValueError(f"Target sizes must be positive (height, width) pairs, got {tuple(size)}.")
        resolved.append((height, width))
    return resolved


def _upsample(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of `(channels, height, width)` maps (`align_corners=False`), as in the official code."""
    return nn.functional.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0]


# Upsampled mask values held at a time by `_semantic_scores` (16 MB in float32).
SEMANTIC_BAND_ELEMENTS = 4 * 1024 * 1024
# Output-size values (masks of several queries, or class scores) post-processing may hold at once: 512 MB in float32.
# Larger outputs (a 6000x8000 photo with 100 queries would need 19 GB of masks) go a chunk of queries at a time, or
# pixel by pixel along the exact path, so that peak memory does not grow with the number of queries.
FULL_MAP_ELEMENTS = 128 * 1024 * 1024


def _semantic_scores(class_probs: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`einsum("qc,qhw->chw", class_probs, sigmoid(_upsample(mask_logits, size)))`: `(num_labels, *size)` scores.

    The upsampled masks are the largest tensor of inference (`num_queries` full-size maps, 210 MB at 512x1024), so
    they are computed a band of rows at a time: the band is reused memory, and the full stack is never held.
    Each band upsamples its rows of mask logits with one more row on either side. When the vertical factor is a power
    of two, the bilinear positions and weights in a band are exactly the full-map ones shifted by whole rows; PyTorch's
    resize kernel may still round the last bit differently for another tensor size, so the scores agree to ~1e-7
    Other sizes take the unbanded path.
    """
    num_queries, height, width = mask_logits.shape
    factor = size[0] // height
    if size[0] != factor * height or factor & (factor - 1):
        return torch.einsum("qc,qhw->chw", class_probs, _upsample(mask_logits, size).sigmoid_())
    band_rows = max(1, SEMANTIC_BAND_ELEMENTS // (num_queries * factor * size[1]))
    scores = mask_logits.new_empty(class_probs.shape[1], size[0] * size[1])
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        low, high = max(start - 1, 0), min(stop + 1, height)
        masks = _upsample(mask_logits[:, low:high], ((high - low) * factor, size[1]))
        masks = masks[:, (start - low) * factor : (stop - low) * factor].reshape(num_queries, -1)
        # Sigmoids in place on the fresh band (a new tensor of this size costs more than the sigmoid); the product is
        # written straight into the band's columns of the scores.
        band = scores[:, start * factor * size[1] : stop * factor * size[1]]
        torch.mm(class_probs.t(), masks.sigmoid_(), out=band)
    return scores.view(-1, *size)


def _resize_taps(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per output index of a bilinear resize from `in_size` to `out_size` (`align_corners=False`): the two input
    indices it reads and the weight of the second, computed as PyTorch's resize kernel computes them."""
    if in_size == out_size:
        indices = torch.arange(out_size, device=device)
        return indices, indices, torch.zeros(out_size, device=device)
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first.to(device), second.to(device), (source - first).clamp(0, 1).to(device)


def _lerp(low: Tensor, high: Tensor, weight: Tensor) -> Tensor:
    return (1 - weight) * low + weight * high


class _ResizeChain:
    """The two bilinear resizes of semantic post-processing along one axis: mask logits (`mask_size`) to the padded
    input (`padded_size`), cropped to `valid_size`, then to `target_size`. For every output index: the mask rows (or
    columns) whose values reach it, and the taps to compute it exactly."""

    def __init__(self, mask_size: int, padded_size: int, valid_size: int, target_size: int, device: torch.device):
        self.mask_size = mask_size
        self.to_padded = _resize_taps(mask_size, padded_size, device)  # indexed by padded position
        self.to_target = _resize_taps(valid_size, target_size, device)  # indexed by target position
        first, second, _ = self.to_padded
        # The mask positions an output position depends on: from the first tap of its first padded position to the
        # second tap of its second one (a window of 2 mask positions, 3 after a second resize).
        self.window_start = first[self.to_target[0]]
        self.window = int((second[self.to_target[1]] - self.window_start).max()) + 1
        self.target_is_valid = valid_size == target_size  # no second resize on this axis


def _window_bounds(mask_logits: Tensor, window: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Per mask position, the minimum and maximum mask logit of the `window` rows and columns starting there (the
    last row and column repeated past the edge)."""
    low = high = mask_logits
    for dim, size in ((1, window[0]), (2, window[1])):
        length = low.shape[dim]
        edge = [low.narrow(dim, length - 1, 1)] * (size - 1), [high.narrow(dim, length - 1, 1)] * (size - 1)
        padded_low, padded_high = torch.cat([low, *edge[0]], dim), torch.cat([high, *edge[1]], dim)
        low, high = padded_low.narrow(dim, 0, length), padded_high.narrow(dim, 0, length)
        for shift in range(1, size):
            low = torch.minimum(low, padded_low.narrow(dim, shift, length))
            high = torch.maximum(high, padded_high.narrow(dim, shift, length))
    return low, high


def _resize_grid(
    mask_logits: Tensor, padded_size: tuple[int, int], valid_size: tuple[int, int], target_size: tuple[int, int]
) -> tuple[_ResizeChain, _ResizeChain, Tensor]:
    """The row and column resize chains of `(queries, mask height, mask width)` mask logits, and the
    `(target height, target width)` flat index of the window of mask positions each output pixel depends on."""
    rows = _ResizeChain(mask_logits.shape[1], padded_size[0], valid_size[0], target_size[0], mask_logits.device)
    cols = _ResizeChain(mask_logits.shape[2], padded_size[1], valid_size[1], target_size[1], mask_logits.device)
    return rows, cols, rows.window_start[:, None] * cols.mask_size + cols.window_start[None, :]


# A winner beats every other class's upper bound by at least this (relative to its score) to be taken at mask
# resolution: far above the float rounding of the full-resolution scores (~1e-6), so it gives the same argmax.
CERTAIN_MARGIN = 1e-4
# Above this fraction of undecided output pixels (untrained models, flat masks), the full maps are cheaper.
MAX_UNDECIDED_FRACTION = 0.5


def _semantic_labels(
    class_probs: Tensor,
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
    resize_masks_first: bool,
) -> Tensor | None:
    """The semantic argmax without the full-resolution class scores, or None where that does not pay (and the full
    maps fit in `FULL_MAP_ELEMENTS`).

    Bilinear resizing keeps every output value between the values it interpolates, and the sigmoid and the class sums
    are monotonic: so, per window of mask positions, `class_probs^T sigmoid(min logit)` and `class_probs^T sigmoid(max
    logit)` bound every class score of the output pixels that window reaches. Where one class's lower bound beats all
    other classes' upper bounds, that class is the answer for all those pixels (the inside of every region). Only the
    remaining pixels (region borders) are computed exactly, at their positions, a chunk at a time.

    Only the classes some query predicts can win in practice: the others are bounded together, by one column of
    per-query maxima, and scored one by one only at the pixels where that bound comes close to the best score.
    """
    rows, cols, window_index = _resize_grid(mask_logits, padded_size, valid_size, target_size)
    num_queries, num_labels = class_probs.shape
    candidates = class_probs.argmax(dim=1).unique()  # sorted, so that ties go to the lower class as in `max`
    others = torch.ones(num_labels, dtype=torch.bool, device=class_probs.device)
    others[candidates] = False
    bounding_probs = class_probs[:, candidates]  # (num_queries, candidates [+ 1 bound of all other classes])
    if others.any():
        bounding_probs = torch.cat([bounding_probs, class_probs[:, others].max(dim=1, keepdim=True).values], dim=1)

    low, high = _window_bounds(mask_logits, (rows.window, cols.window))
    lower = torch.mm(low.flatten(1).t().sigmoid_(), bounding_probs[:, : len(candidates)])  # (mask positions, classes)
    upper = torch.mm(high.flatten(1).t().sigmoid_(), bounding_probs)
    winner, decided = _decided_winner(lower, upper)
    labels = candidates[winner][window_index]
    undecided = (~decided[window_index]).nonzero()
    full_map_elements = (num_queries if resize_masks_first else num_labels) * labels.numel()
    if len(undecided) > MAX_UNDECIDED_FRACTION * labels.numel() and full_map_elements <= FULL_MAP_ELEMENTS:
        return None

    pixel_logits = mask_logits.flatten(1).t().contiguous()  # (mask positions, num_queries): a pixel's queries at once
    chunk = max(1, SEMANTIC_BAND_ELEMENTS // num_queries)
    for start in range(0, len(undecided), chunk):
        y, x = undecided[start : start + chunk].unbind(1)
        scores = _exact_scores(bounding_probs, pixel_logits, rows, cols, y, x, resize_masks_first)
        winner, decided = _decided_winner(scores[:, : len(candidates)], scores)
        labels[y, x] = candidates[winner]
        if not decided.all():  # another class comes close: score them all
            y, x = y[~decided], x[~decided]
            scores = _exact_scores(class_probs, pixel_logits, rows, cols, y, x, resize_masks_first)
            labels[y, x] = scores.max(dim=1).indices
    return labels


def _decided_winner(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Per row (a pixel or window): the column of the largest lower bound, and whether it beats the upper bounds of
    all other columns of `upper` (the same columns, then any extra ones) by the margin."""
    best, winner = lower.max(dim=1)
    runner_up = upper.scatter(1, winner[:, None], -math.inf).max(dim=1).values
    return winner, (best - runner_up) > CERTAIN_MARGIN * best.abs().clamp(min=1)


def _padded_logits(
    pixel_logits: Tensor, rows: _ResizeChain, cols: _ResizeChain, padded_y: Tensor, padded_x: Tensor
) -> Tensor:
    """`(pixels, num_queries)` mask logits resized to the padded input, at the padded positions `(padded_y,
    padded_x)`, from the mask logits laid out `(mask height * mask width, num_queries)`."""
    width = cols.mask_size
    y0, y1, wy = (tap[padded_y] for tap in rows.to_padded)
    x0, x1, wx = (tap[padded_x] for tap in cols.to_padded)
    wx = wx[:, None]
    top = _lerp(pixel_logits[y0 * width + x0], pixel_logits[y0 * width + x1], wx)
    bottom = _lerp(pixel_logits[y1 * width + x0], pixel_logits[y1 * width + x1], wx)
    return _lerp(top, bottom, wy[:, None])


def _interpolate_at(
    rows: _ResizeChain, cols: _ResizeChain, y: Tensor, x: Tensor, padded_values: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """`(len(y), channels)` values at the output pixels `(y, x)` of the second resize (cropped padded input to the
    output size) of the `(pixels, channels)` values `padded_values(padded_y, padded_x)` gives at padded positions.
    Each padded position an output pixel interpolates is computed once."""
    (y0, y1, wy), (x0, x1, wx) = ((tap[y] for tap in rows.to_target), (tap[x] for tap in cols.to_target))
    corner_rows = [y0] if rows.target_is_valid else [y0, y1]
    corner_cols = [x0] if cols.target_is_valid else [x0, x1]
    padded_width = len(cols.to_padded[0])
    corners = torch.stack([row * padded_width + col for row in corner_rows for col in corner_cols])
    positions, corners = torch.unique(corners, return_inverse=True)
    values = padded_values(positions // padded_width, positions % padded_width)
    corner_values = [values[index] for index in corners]
    if not cols.target_is_valid:
        wx = wx[:, None]
        corner_values = [_lerp(left, right, wx) for left, right in zip(corner_values[::2], corner_values[1::2])]
    if not rows.target_is_valid:
        corner_values = [_lerp(corner_values[0], corner_values[1], wy[:, None])]
    return corner_values[0]


def _logits_at(pixel_logits: Tensor, rows: _ResizeChain, cols: _ResizeChain, y: Tensor, x: Tensor) -> Tensor:
    """`(len(y), num_queries)` mask logits at the output pixels `(y, x)`, after both resizes."""
    return _interpolate_at(rows, cols, y, x, partial(_padded_logits, pixel_logits, rows, cols))


def _exact_scores(
    class_probs: Tensor,
    pixel_logits: Tensor,
    rows: _ResizeChain,
    cols: _ResizeChain,
    y: Tensor,
    x: Tensor,
    resize_masks_first: bool,
) -> Tensor:
    """`(len(y), num_labels)` class scores of the output pixels `(y, x)`, computed as the full maps compute them."""
    if resize_masks_first:
        return torch.mm(_logits_at(pixel_logits, rows, cols, y, x).sigmoid_(), class_probs)

    def padded_scores(padded_y: Tensor, padded_x: Tensor) -> Tensor:
        return torch.mm(_padded_logits(pixel_logits, rows, cols, padded_y, padded_x).sigmoid_(), class_probs)

    return _interpolate_at(rows, cols, y, x, padded_scores)


def _crop_and_resize(maps: torch.Tensor, valid_size: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """Drop the batch padding (bottom/right), then resize to the output size (detectron2 `sem_seg_postprocess`).

    A bilinear resize to the same size is the identity, so it is skipped."""
    maps = maps[:, : valid_size[0], : valid_size[1]]
    return maps if tuple(valid_size) == tuple(target_size) else _upsample(maps, target_size)


# Mask logits this close to the mask threshold's logit are compared at full resolution.
THRESHOLD_MARGIN = 1e-3


def _panoptic_maps(
    scores: Tensor,
    mask_logits: Tensor,
    mask_threshold: float,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
) -> tuple[Tensor, Tensor, list[int]] | None:
    """What panoptic post-processing needs of the kept queries' masks at the output size, without them: per pixel, the
    query with the largest `score * sigmoid(mask)` (as `max(dim=0)` finds it) and whether its mask reaches
    `mask_threshold` there; per query, its area above the threshold. None where that does not pay.

    As in `_semantic_labels`, windows of mask positions bound the pixels they reach: where one query's lower bound
    beats every other query's upper bound, and no mask crosses the threshold inside the window, the window decides all
    its pixels. The other pixels (borders of masks) are computed exactly, a chunk at a time.
    """
    threshold_logit = math.log(mask_threshold / (1.0 - mask_threshold))
    rows, cols, window_index = _resize_grid(mask_logits, padded_size, valid_size, target_size)
    num_queries = len(scores)
    low, high = (bound.flatten(1) for bound in _window_bounds(mask_logits, (rows.window, cols.window)))
    all_above = low >= threshold_logit + THRESHOLD_MARGIN  # (queries, mask positions)
    crossing = (high >= threshold_logit - THRESHOLD_MARGIN) & ~all_above
    winner, decided = _decided_winner(low.t().sigmoid() * scores, high.t().sigmoid() * scores)
    exact_windows = ~decided | crossing.any(dim=0)
    exact = exact_windows[window_index].flatten().nonzero()[:, 0]
    if len(exact) > MAX_UNDECIDED_FRACTION * window_index.numel():
        return None
    winners = winner[window_index]
    winner_above = all_above.gather(0, winner[None])[0][window_index]
    # Areas of the decided windows: the output pixels each window reaches, counted per mask row and column.
    pixels_per_window = (
        torch.bincount(rows.window_start, minlength=mask_logits.shape[1])[:, None]
        * torch.bincount(cols.window_start, minlength=mask_logits.shape[2])[None, :]
    ).flatten()
    areas = (all_above & ~exact_windows) * pixels_per_window  # (queries, mask positions)
    areas = areas.sum(dim=1)

    pixel_logits = mask_logits.flatten(1).t().contiguous()  # (mask positions, queries)
    chunk = max(1, SEMANTIC_BAND_ELEMENTS // num_queries)
    for start in range(0, len(exact), chunk):
        pixels = exact[start : start + chunk]
        y, x = pixels // target_size[1], pixels % target_size[1]
        masks = _logits_at(pixel_logits, rows, cols, y, x).sigmoid_()
        above = masks >= mask_threshold  # (pixels, queries)
        areas += above.sum(dim=0)
        pixel_winners = (masks * scores).max(dim=1).indices
        winners.view(-1)[pixels] = pixel_winners
        winner_above.view(-1)[pixels] = above.gather(1, pixel_winners[:, None])[:, 0]
    return winners, winner_above, areas.tolist()


def _output_masks(
    mask_logits: Tensor, padded_size: tuple[int, int], valid_size: tuple[int, int], target_size: tuple[int, int]
) -> Iterator[tuple[int, Tensor]]:
    """`(start, masks)`: the mask logits of queries `start:start + len(masks)` at the output size, as many queries at
    a time as `FULL_MAP_ELEMENTS` allows (at least one). Bilinear resizing treats each query's map on its own, so the
    values do not depend on the chunking."""
    chunk = max(1, FULL_MAP_ELEMENTS // max(math.prod(padded_size), math.prod(target_size)))
    for start in range(0, len(mask_logits), chunk):
        masks = _upsample(mask_logits[start : start + chunk], padded_size)
        yield start, _crop_and_resize(masks, valid_size, target_size)


def _panoptic_maps_in_chunks(
    scores: Tensor,
    mask_logits: Tensor,
    mask_threshold: float,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
) -> tuple[Tensor, Tensor, list[int]]:
    """`_panoptic_maps`' results from the kept queries' masks at the output size, a chunk of queries at a time: the
    winner of each pixel so far, its weighted mask value and whether it is above the threshold. A later chunk takes a
    pixel only with a strictly larger value, so ties go to the first query, as `max(dim=0)` gives them."""
    best = torch.full(target_size, -math.inf, device=mask_logits.device)
    winners = torch.zeros(target_size, dtype=torch.int64, device=mask_logits.device)
    winner_above = torch.zeros(target_size, dtype=torch.bool, device=mask_logits.device)
    areas = []
    for start, masks in _output_masks(mask_logits, padded_size, valid_size, target_size):
        masks = masks.sigmoid_()
        above = masks >= mask_threshold  # (chunk queries, height, width)
        areas += above.flatten(1).sum(dim=1).tolist()
        chunk_best, chunk_winners = masks.mul_(scores[start : start + len(masks), None, None]).max(dim=0)
        taken = chunk_best > best
        best = torch.where(taken, chunk_best, best)
        winners = torch.where(taken, chunk_winners + start, winners)
        winner_above = torch.where(taken, above.gather(0, chunk_winners[None])[0], winner_above)
    return winners, winner_above, areas


def _best_instance_map(
    mask_chunks: Iterable[tuple[int, Tensor]], detection_queries: Tensor, num_queries: int, size: tuple[int, int]
) -> Tensor:
    """`(height, width)` map of the first detection (in `detection_queries` order, one query per detection) whose
    query mask covers each pixel; -1 where none does. `mask_chunks` yields `(start, binary masks)` of the queries
    `start:start + len(masks)`. Detections of the same query share its mask, so each query counts with its first
    detection."""
    num_detections = len(detection_queries)
    device = detection_queries.device
    first_detection = torch.full((num_queries,), num_detections, dtype=torch.int32, device=device)
    ranks = torch.arange(num_detections, dtype=torch.int32, device=device)
    first_detection.scatter_reduce_(0, detection_queries, ranks, reduce="amin")
    best = torch.full(size, num_detections, dtype=torch.int32, device=device)
    for start, binary_masks in mask_chunks:
        chunk_first = first_detection[start : start + len(binary_masks), None, None]
        best = torch.minimum(best, torch.where(binary_masks, chunk_first, num_detections).amin(dim=0))
    return best.masked_fill_(best == num_detections, -1)


# The post-processing settings a processor takes from its model's config (`PEMConfig`), where they are stated.
INFERENCE_SETTINGS = ("thing_ids", "object_mask_threshold", "overlap_threshold", "test_topk_per_image")


def inference_settings(config) -> dict:
    """The post-processing settings of a model config, as processor keyword arguments."""
    return {name: getattr(config, name) for name in INFERENCE_SETTINGS}


class PEMPostProcessingMixin:
    r"""
    The `post_process_*` methods of the PEM image processors, with their settings (saved with the processor; built
    from the model config by `from_preset(..., model_config=config)`):

    Args:
        thing_ids (`list[int]`, *optional*):
            Classes that are "things" (countable instances). In panoptic post-processing the other classes ("stuff")
            are fused by default; instance post-processing keeps only things. `None`: every class is a thing.
        resize_masks_before_semantic_inference (`bool`, *optional*, defaults to `False`):
            Order of semantic post-processing. `False` (official semantic configs): combine masks and classes at the
            padded input size, then crop and resize the class scores. `True` (official panoptic configs): crop and
            resize the query masks first. The two agree when the output size equals the processed image size.
        object_mask_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic post-processing: default minimum class score of a kept query.
        overlap_threshold (`float`, *optional*, defaults to 0.8):
            Panoptic post-processing: default minimum visible fraction of a query's mask.
        test_topk_per_image (`int`, *optional*, defaults to 100):
            Instance post-processing: detections kept per image (top-k over queries x classes).
    """

    def __init__(
        self,
        thing_ids: list[int] | None = None,
        resize_masks_before_semantic_inference: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.thing_ids = [int(i) for i in thing_ids] if thing_ids is not None else None
        self.resize_masks_before_semantic_inference = resize_masks_before_semantic_inference
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image

    @torch.no_grad()
    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | None = None,
        return_segmentation_scores: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Semantic maps from [`PEMForUniversalSegmentationOutput`], as the official PEM inference computes them: per
        pixel, `sum_q softmax(class_logits_q)[:-1] * sigmoid(mask_logits_q)`, then the argmax over classes.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image, usually its original size. Defaults to the processed size
                without padding.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Also return the class scores `(num_labels, height, width)` (held whole: 150 classes at 6000x8000
                take 29 GB in float32).
            pixel_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                The processor's `pixel_mask`, to drop the batch padding. Defaults to `outputs.pixel_mask` if the
                outputs carry it, else the inputs are assumed unpadded.

        Returns:
            `list[torch.LongTensor]` of `(height, width)` class maps, or with `return_segmentation_scores` a list of
            [`SemanticSegmentationPostProcessorOutput`] (`segmentation`, `segmentation_scores`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]  # (num_queries, num_labels); no-object dropped
            if not return_segmentation_scores:
                segmentation = _semantic_labels(
                    class_probs,
                    mask_logit,
                    padded_size,
                    valid_size,
                    target_size,
                    self.resize_masks_before_semantic_inference,
                )
                if segmentation is not None:
                    results.append(segmentation)
                    continue
            if self.resize_masks_before_semantic_inference:
                masks = _crop_and_resize(_upsample(mask_logit, padded_size), valid_size, target_size)
                # The sigmoids in place on the freshly resized masks: no second tensor of this size.
                scores = torch.einsum("qc,qhw->chw", class_probs, masks.sigmoid_())
            else:
                scores = _semantic_scores(class_probs, mask_logit, padded_size)
                scores = _crop_and_resize(scores, valid_size, target_size)
            # `max` returns the first maximum's index like `argmax`, and is faster over a leading dimension on CPU.
            segmentation = scores.max(dim=0).indices
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": segmentation, "segmentation_scores": scores}
                    )
                )
            else:
                results.append(segmentation)
        return results

    @torch.no_grad()
    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: list[tuple[int, int]] | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Panoptic segmentation as the official PEM inference computes it (defaults = official settings).

        Queries whose best class is not "no object" and scores `> threshold` are kept; each pixel goes to the kept
        query with the highest `score * sigmoid(mask)`. A query becomes a segment on its pixels with
        `sigmoid(mask) >= mask_threshold`, unless fewer than `overlap_mask_area_threshold` of its own mask
        (`sigmoid >= mask_threshold`) won the argmax. Classes in `label_ids_to_fuse` form one segment per class.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*):
                Minimum class score of a kept query. Defaults to the processor's `object_mask_threshold` (official
                `OBJECT_MASK_THRESHOLD`).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*):
                Minimum visible fraction of a query's mask. Defaults to the processor's `overlap_threshold` (official
                `OVERLAP_THRESHOLD`).
            label_ids_to_fuse (`set[int]`, *optional*):
                Classes merged into a single segment. Defaults to the stuff classes (those not in `thing_ids`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image: `segmentation` (`torch.IntTensor` `(height, width)`, segment ids from 1, 0 =
            void) and `segments_info` (list of `{"id", "label_id", "was_fused", "score"}`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_labels = class_logits.shape[-1] - 1
        threshold = self.object_mask_threshold if threshold is None else threshold
        if overlap_mask_area_threshold is None:
            overlap_mask_area_threshold = self.overlap_threshold
        _check_fraction("threshold", threshold)
        _check_fraction("mask_threshold", mask_threshold, open_interval=True)
        _check_fraction("overlap_mask_area_threshold", overlap_mask_area_threshold)
        if label_ids_to_fuse is None:
            label_ids_to_fuse = set(range(num_labels)) - set(self._thing_ids(num_labels))
        elif unknown := sorted(set(label_ids_to_fuse) - set(range(num_labels))):
            raise ValueError(f"label_ids_to_fuse has ids outside [0, {num_labels - 1}]: {unknown}.")
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            scores, labels = class_logit.softmax(dim=-1).max(dim=-1)
            keep = labels.ne(num_labels) & (scores > threshold)
            segmentation = torch.zeros(target_size, dtype=torch.int32, device=mask_logit.device)
            segments_info = []
            results.append({"segmentation": segmentation, "segments_info": segments_info})
            if not keep.any():
                continue
            scores, labels = scores[keep], labels[keep]
            mask_logit = mask_logit[keep]
            sizes = (padded_size, valid_size, target_size)
            maps = _panoptic_maps(scores, mask_logit, mask_threshold, *sizes)
            if maps is None:  # the masks at the output size
                maps = _panoptic_maps_in_chunks(scores, mask_logit, mask_threshold, *sizes)
            winners, winner_above, original_areas = maps
            won_areas = torch.bincount(winners.flatten(), minlength=len(labels)).tolist()
            visible_areas = torch.bincount(winners[winner_above], minlength=len(labels)).tolist()
            # Each pixel belongs to its winner's segment: the segment ids of the kept queries (0: rejected), in the
            # official order, then one lookup for the whole map.
            segment_of_query = [0] * len(labels)
            fused_segment_ids: dict[int, int] = {}
            for k, label in enumerate(labels.tolist()):
                if won_areas[k] == 0 or original_areas[k] == 0 or visible_areas[k] == 0:
                    continue
                if won_areas[k] / original_areas[k] < overlap_mask_area_threshold:
                    continue
                should_fuse = label in label_ids_to_fuse
                if should_fuse and label in fused_segment_ids:
                    segment_of_query[k] = fused_segment_ids[label]
                    continue
                segment_id = segment_of_query[k] = len(segments_info) + 1
                segments_info.append(
                    {"id": segment_id, "label_id": label, "was_fused": should_fuse, "score": float(scores[k])}
                )
                if should_fuse:
                    fused_segment_ids[label] = segment_id
            segment_ids = torch.tensor(segment_of_query, dtype=torch.int32, device=segmentation.device)
            segmentation.copy_(torch.where(winner_above, segment_ids[winners], 0))
        return results

    @torch.no_grad()
    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: list[tuple[int, int]] | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Instance segmentation as the official PEM inference computes it: the `test_topk_per_image` best (query,
        class) pairs over `softmax(class_logits)[:, :-1]`, restricted to thing classes; binary masks
        `sigmoid(mask) > mask_threshold` at the output size; score = class probability x mean mask probability inside
        the binary mask. With the defaults, every official detection is returned.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*, defaults to 0.0):
                Minimum score of a returned instance (the official inference keeps all top-k detections).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                Unused (instances may overlap); accepted for compatibility with the `image-segmentation` pipeline.
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            return_coco_annotation (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as one run-length encoding per instance (see `binary_mask_to_rle`).
            return_binary_maps (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as a `(num_instances, height, width)` boolean tensor, one mask per instance
                (one byte per pixel and instance; the other formats hold a few masks at a time).
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image, instances sorted by decreasing score: `segmentation` (`torch.IntTensor`
            `(height, width)` of instance ids from 0, -1 = background, each pixel showing the best-scoring instance
            covering it; or the RLE list / binary maps) and `segments_info` (`{"id", "label_id", "was_fused",
            "score"}`).
        """
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps cannot both be True.")
        _check_fraction("threshold", threshold)
        _check_fraction("mask_threshold", mask_threshold, open_interval=True)
        mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))  # exactly 0.0 for 0.5
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_queries, num_labels = class_logits.shape[1], class_logits.shape[2] - 1
        thing_ids = torch.tensor(self._thing_ids(num_labels), dtype=torch.int64, device=class_logits.device)
        top_k = min(self.test_topk_per_image, num_queries * num_labels)
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]
            topk_scores, topk_indices = class_probs.flatten().topk(top_k, sorted=False)
            labels, queries = topk_indices % num_labels, topk_indices // num_labels
            is_thing = torch.isin(labels, thing_ids)
            topk_scores, labels, queries = topk_scores[is_thing], labels[is_thing], queries[is_thing]

            # Masks depend only on the query: resize each selected query once (detections share queries).
            queries, detection_query = torch.unique(queries, return_inverse=True)
            sizes = (padded_size, valid_size, target_size)
            binary_chunks, mask_scores, encodings = [], [], []
            # The binary masks are kept for the output where they fit; a larger output recomputes them in chunks.
            keep_binary = return_binary_maps or len(queries) * target_size[0] * target_size[1] <= FULL_MAP_ELEMENTS
            for start, masks in _output_masks(mask_logit[queries], *sizes):
                binary_masks = masks > mask_logit_threshold  # (chunk queries, height, width)
                # Sigmoids in place: only the binary masks are needed after the mask scores.
                mask_scores.append(
                    (masks.sigmoid_().flatten(1) * binary_masks.flatten(1)).sum(1)
                    / (binary_masks.flatten(1).sum(1) + 1e-6)
                )
                if return_coco_annotation:
                    encodings += [binary_mask_to_rle(mask) for mask in binary_masks]
                elif keep_binary:
                    binary_chunks.append((start, binary_masks))
            scores = topk_scores * torch.cat(mask_scores)[detection_query]
            order = [i for i in scores.argsort(descending=True, stable=True).tolist() if scores[i] >= threshold]

            segments_info = [
                {"id": index, "label_id": int(labels[i]), "was_fused": False, "score": float(scores[i])}
                for index, i in enumerate(order)
            ]
            order_queries = detection_query[order]
            if return_binary_maps:
                segmentation = torch.cat([masks for _, masks in binary_chunks])[order_queries]
            elif return_coco_annotation:
                segmentation = [encodings[query] for query in order_queries.tolist()]
            else:
                if not keep_binary:
                    chunks = _output_masks(mask_logit[queries], *sizes)
                    binary_chunks = ((start, masks > mask_logit_threshold) for start, masks in chunks)
                segmentation = _best_instance_map(binary_chunks, order_queries, len(queries), target_size)
            results.append({"segmentation": segmentation, "segments_info": segments_info})
        return results

    def _thing_ids(self, num_labels: int) -> list[int]:
        if self.thing_ids is None:
            return list(range(num_labels))
        if any(not 0 <= i < num_labels for i in self.thing_ids):
            raise ValueError(
                f"thing_ids {self.thing_ids} do not fit a model with {num_labels} classes: set the processor's "
                "thing_ids to class indices of this model."
            )
        return self.thing_ids

    @staticmethod
    def _unpack_outputs(outputs, target_sizes, pixel_mask):
        class_logits = outputs.class_queries_logits.float()  # (batch_size, num_queries, num_labels + 1)
        mask_logits = outputs.masks_queries_logits.float()  # (batch_size, num_queries, height / 4, width / 4)
        if pixel_mask is None:
            pixel_mask = getattr(outputs, "pixel_mask", None)
        padded_size, valid_sizes = _padded_and_valid_sizes(mask_logits, pixel_mask)
        return class_logits, mask_logits, padded_size, valid_sizes, _resolve_target_sizes(target_sizes, valid_sizes)
