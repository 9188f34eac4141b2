"""Prototypes: the token PEM-CA selects per query and head in every decoder layer, drawn on the image."""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from ..configuration_pem import MASK_STRIDE, SIZE_DIVISOR, padded_size
from ..post_processing_pem import valid_sizes
from .segmentation import get_palette, label_name

# The pixel-decoder levels the decoder layers cycle through have strides 32, 16 and 8 of the padded input.
_LEVEL_STRIDES = (SIZE_DIVISOR, SIZE_DIVISOR // 2, SIZE_DIVISOR // 4)


def padded_input_size(masks_queries_logits: torch.Tensor) -> tuple[int, int]:
    """The size the model padded its input to (a multiple of `SIZE_DIVISOR`), from the stride-4 mask logits."""
    mask_height, mask_width = masks_queries_logits.shape[-2:]
    return padded_size((mask_height * MASK_STRIDE, mask_width * MASK_STRIDE))


def prototype_locations(prototype_indices, padded_size: tuple[int, int]) -> list[torch.Tensor]:
    """Pixel positions of the prototype tokens in the padded input: per decoder layer, a float tensor
    `(batch_size, num_heads, num_queries, 2)` of `(y, x)` token centres (layer `i` attends to the level of stride
    `32 / 2 ** (i % 3)`). `prototype_indices` is the model output of `output_prototype_indices=True`."""
    locations = []
    for layer, indices in enumerate(prototype_indices):
        stride = _LEVEL_STRIDES[layer % len(_LEVEL_STRIDES)]
        width = padded_size[1] // stride
        rows, columns = indices // width, indices % width
        locations.append(torch.stack(((rows + 0.5) * stride, (columns + 0.5) * stride), dim=-1).float())
    return locations


def head_colours(num_heads: int) -> list[tuple[int, int, int]]:
    """The marker colour of each attention head in `draw_prototypes`."""
    return get_palette(None, num_heads)


def draw_prototype_panel(
    image: PIL.Image.Image, locations: torch.Tensor, radius: int = 3, dim: float = 0.55
) -> PIL.Image.Image:
    """The image, dimmed, with one marker per head at `locations` (`(num_heads, 2)` `(y, x)` pixel positions in the
    image), filled with the head's colour (`head_colours`); later heads are drawn over earlier ones."""
    panel = PIL.Image.fromarray((np.asarray(image.convert("RGB"), dtype=np.float32) * dim).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(panel)
    for (y, x), colour in zip(locations.tolist(), head_colours(len(locations))):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline="white")
    return panel


def kept_queries(outputs, batch_index: int = 0, threshold: float = 0.8, limit: int = 8) -> list[int]:
    """The queries panoptic post-processing keeps (best class not "no object", score above `threshold`), best
    first, at most `limit`."""
    scores, labels = outputs.class_queries_logits[batch_index].float().softmax(dim=-1).max(dim=-1)
    num_labels = outputs.class_queries_logits.shape[-1] - 1
    keep = (labels != num_labels) & (scores > threshold)
    order = scores.argsort(descending=True, stable=True)
    return [int(query) for query in order if keep[query]][:limit]


@torch.no_grad()
def draw_prototypes(
    image: PIL.Image.Image,
    outputs,
    queries: list[int] | None = None,
    batch_index: int = 0,
    id2label: dict[int, str] | None = None,
    threshold: float = 0.8,
    panel_width: int = 256,
) -> PIL.Image.Image:
    """
    PEM's prototypes made visible: one row per query, with the query's mask over the image, then for every decoder
    layer the prototype token each attention head selected (one colour per head, see `head_colours`).

    Args:
        image (`PIL.Image.Image`): the image given to the processor.
        outputs ([`PEMForUniversalSegmentationOutput`]): of `model(**inputs, output_prototype_indices=True)`; its
            `pixel_mask` (passed to the model) maps the processed image back to `image`.
        queries (`list[int]`, *optional*): the queries to show; defaults to the kept segments (`kept_queries`).
        id2label (`dict[int, str]`, *optional*): class names for the row titles.
        threshold (`float`, *optional*, defaults to 0.8): the class score of a kept query (default `queries`).
        panel_width (`int`, *optional*, defaults to 256): the width of each panel; tall images get narrower panels
            (at most twice as high as `panel_width`), so that the canvas stays small whatever the image's shape.
    """
    if outputs.prototype_indices is None:
        raise ValueError("The outputs have no prototype indices: run the model with output_prototype_indices=True.")
    queries = kept_queries(outputs, batch_index, threshold) if queries is None else list(queries)
    masks = outputs.masks_queries_logits[batch_index].float()
    padded = padded_input_size(outputs.masks_queries_logits)
    pixel_mask = getattr(outputs, "pixel_mask", None)
    valid = valid_sizes(pixel_mask)[batch_index] if pixel_mask is not None else padded
    if not isinstance(panel_width, int) or panel_width < 8:
        raise ValueError(f"panel_width must be a whole number of pixels, at least 8, got {panel_width!r}.")
    scale = min(panel_width / image.width, 2 * panel_width / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Positions in the processed image -> panel pixels.
    to_panel = torch.tensor([size[1] / valid[0], size[0] / valid[1]])
    picture = image.convert("RGB").resize(size, PIL.Image.BILINEAR)
    locations = [layer[batch_index] * to_panel for layer in prototype_locations(outputs.prototype_indices, padded)]
    font = PIL.ImageFont.load_default(size=12)
    caption = 18
    columns = 1 + len(locations)
    canvas = PIL.Image.new("RGB", (columns * (size[0] + 4), max(1, len(queries)) * (size[1] + caption + 4)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    probabilities = outputs.class_queries_logits[batch_index].float().softmax(dim=-1)
    for row, query in enumerate(queries):
        top = row * (size[1] + caption + 4)
        mask = torch.nn.functional.interpolate(masks[query][None, None], size=padded, mode="bilinear")[0, 0]
        mask = mask[: valid[0], : valid[1]] > 0
        mask = np.asarray(PIL.Image.fromarray(mask.numpy()).resize(size, PIL.Image.NEAREST))
        overlay = np.asarray(picture, dtype=np.float32).copy()
        overlay[mask] = 0.4 * overlay[mask] + 0.6 * np.array([255.0, 64.0, 64.0])
        score, label = probabilities[query, :-1].max(dim=-1)
        name = label_name(int(label), id2label)
        draw.text((2, top), f"query {query}: {name} {float(score):.2f}", fill="black", font=font)
        canvas.paste(PIL.Image.fromarray(overlay.astype(np.uint8)), (0, top + caption))
        for layer, layer_locations in enumerate(locations):
            left = (layer + 1) * (size[0] + 4)
            stride = _LEVEL_STRIDES[layer % len(_LEVEL_STRIDES)]
            draw.text((left + 2, top), f"layer {layer + 1} (stride {stride})", fill="black", font=font)
            canvas.paste(draw_prototype_panel(picture, layer_locations[:, query]), (left, top + caption))
    return canvas
