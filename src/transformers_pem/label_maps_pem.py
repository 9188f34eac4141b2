"""PEM's post-processing maps at the output size without the stack of upsampled masks: semantic scores a band of rows
at a time, and semantic, panoptic and instance label maps bounded over windows of mask positions (exact bilinear
interpolation only where the bounds leave a pixel undecided), or a chunk of queries at a time where bounding does not
pay. The results equal those of the full upsampled masks (`post_processing_pem`'s tests compare them)."""

import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import torch
from torch import Tensor, nn


def upsample(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of `(channels, height, width)` maps (`align_corners=False`), as in the official code."""
    return nn.functional.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0]


# Upsampled mask values held at a time by `semantic_scores` (16 MB in float32).
SEMANTIC_BAND_ELEMENTS = 4 * 1024 * 1024
# Output-size values (masks of several queries, or class scores) post-processing may hold at once: 512 MB in float32.
# Larger outputs (a 6000x8000 photo with 100 queries would need 19 GB of masks) go a chunk of queries at a time, or
# pixel by pixel along the exact path, so that peak memory does not grow with the number of queries.
FULL_MAP_ELEMENTS = 128 * 1024 * 1024


def semantic_scores(class_probs: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`einsum("qc,qhw->chw", class_probs, sigmoid(upsample(mask_logits, size)))`: `(num_labels, *size)` scores.

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
        return torch.einsum("qc,qhw->chw", class_probs, upsample(mask_logits, size).sigmoid_())
    band_rows = max(1, SEMANTIC_BAND_ELEMENTS // (num_queries * factor * size[1]))
    scores = mask_logits.new_empty(class_probs.shape[1], size[0] * size[1])
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        low, high = max(start - 1, 0), min(stop + 1, height)
        masks = upsample(mask_logits[:, low:high], ((high - low) * factor, size[1]))
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


def semantic_labels(
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


def crop_and_resize(maps: torch.Tensor, valid_size: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """Drop the batch padding (bottom/right), then resize to the output size (detectron2 `sem_seg_postprocess`).

    A bilinear resize to the same size is the identity, so it is skipped."""
    maps = maps[:, : valid_size[0], : valid_size[1]]
    return maps if tuple(valid_size) == tuple(target_size) else upsample(maps, target_size)


# Mask logits this close to the mask threshold's logit are compared at full resolution.
THRESHOLD_MARGIN = 1e-3


def probability_logit(probability: float) -> float:
    """The logit of a probability in [0, 1): exactly 0.0 for 0.5, -inf for 0 (every logit reaches it)."""
    return -math.inf if probability == 0 else math.log(probability / (1.0 - probability))


def panoptic_maps(
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

    As in `semantic_labels`, windows of mask positions bound the pixels they reach: where one query's lower bound
    beats every other query's upper bound, and no mask crosses the threshold inside the window, the window decides all
    its pixels. The other pixels (borders of masks) are computed exactly, a chunk at a time.
    """
    threshold_logit = probability_logit(mask_threshold)
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


def output_masks(
    mask_logits: Tensor, padded_size: tuple[int, int], valid_size: tuple[int, int], target_size: tuple[int, int]
) -> Iterator[tuple[int, Tensor]]:
    """`(start, masks)`: the mask logits of queries `start:start + len(masks)` at the output size, as many queries at
    a time as `FULL_MAP_ELEMENTS` allows (at least one). Bilinear resizing treats each query's map on its own, so the
    values do not depend on the chunking."""
    chunk = max(1, FULL_MAP_ELEMENTS // max(math.prod(padded_size), math.prod(target_size)))
    for start in range(0, len(mask_logits), chunk):
        masks = upsample(mask_logits[start : start + chunk], padded_size)
        yield start, crop_and_resize(masks, valid_size, target_size)


def panoptic_maps_in_chunks(
    scores: Tensor,
    mask_logits: Tensor,
    mask_threshold: float,
    padded_size: tuple[int, int],
    valid_size: tuple[int, int],
    target_size: tuple[int, int],
) -> tuple[Tensor, Tensor, list[int]]:
    """`panoptic_maps`' results from the kept queries' masks at the output size, a chunk of queries at a time: the
    winner of each pixel so far, its weighted mask value and whether it is above the threshold. A later chunk takes a
    pixel only with a strictly larger value, so ties go to the first query, as `max(dim=0)` gives them."""
    best = torch.full(target_size, -math.inf, device=mask_logits.device)
    winners = torch.zeros(target_size, dtype=torch.int64, device=mask_logits.device)
    winner_above = torch.zeros(target_size, dtype=torch.bool, device=mask_logits.device)
    areas = []
    for start, masks in output_masks(mask_logits, padded_size, valid_size, target_size):
        masks = masks.sigmoid_()
        above = masks >= mask_threshold  # (chunk queries, height, width)
        areas += above.flatten(1).sum(dim=1).tolist()
        chunk_best, chunk_winners = masks.mul_(scores[start : start + len(masks), None, None]).max(dim=0)
        taken = chunk_best > best
        best = torch.where(taken, chunk_best, best)
        winners = torch.where(taken, chunk_winners + start, winners)
        winner_above = torch.where(taken, above.gather(0, chunk_winners[None])[0], winner_above)
    return winners, winner_above, areas


def best_instance_map(
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
