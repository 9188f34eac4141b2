"""Colour overlays of PEM segmentation results, with a legend of the label names."""

import colorsys
import os

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from ..image_loading_pem import load_image
from ..labels_pem import DATASET_LABELS

# Official dataset colours, indexed by class: "cityscapes" (19 train ids) and "ade20k" (150 classes).
PALETTES: dict[str, list[tuple[int, int, int]]] = {
    dataset: [label.color for label in labels] for dataset, labels in DATASET_LABELS.items()
}

_SHADE_STEPS = (0.0, 0.4, -0.35, 0.65, -0.55)


def get_palette(palette: str | list[tuple[int, int, int]] | None, num_labels: int) -> list[tuple[int, int, int]]:
    """
    Colours for `num_labels` classes: a dataset palette by name (see `PALETTES`), an explicit list of RGB colours, or
    with `None` evenly spaced hues (deterministic).
    """
    if palette is None:
        return [
            tuple(round(255 * c) for c in colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.65, 0.95))
            for index in range(num_labels)
        ]
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ValueError(f"Unknown palette {palette!r}: use one of {sorted(PALETTES)} or a list of RGB colours.")
        palette = PALETTES[palette]
    if len(palette) < num_labels:
        raise ValueError(f"The palette has {len(palette)} colours but the labels go up to class {num_labels - 1}.")
    return [tuple(int(c) for c in colour) for colour in palette]


def draw_segmentation(
    image: "PIL.Image.Image | np.ndarray | str | os.PathLike | None",
    segmentation: "torch.Tensor | np.ndarray",
    segments_info: list[dict] | None = None,
    id2label: dict[int, str] | None = None,
    palette: str | list[tuple[int, int, int]] | None = None,
    alpha: float = 0.6,
    show_legend: bool = True,
    ignore_index: int | None = 255,
) -> PIL.Image.Image:
    """
    Draw a semantic, panoptic or instance result as a colour overlay with a legend of the classes it contains.

    Args:
        image (`PIL.Image.Image` or `np.ndarray` `(height, width, 3)`, *optional*):
            The image the result belongs to (or its path), at the result's size (post-process with `target_sizes` = the
            image size).
            `None` draws the colour map alone.
        segmentation (`torch.Tensor` or `np.ndarray` of shape `(height, width)`):
            Class ids (a semantic result or label map), or segment ids of a panoptic / instance result together with
            `segments_info` (ids without an entry, e.g. void, stay uncoloured).
        segments_info (`list[dict]`, *optional*):
            The `segments_info` of a panoptic or instance result (`id`, `label_id`, `was_fused`).
        id2label (`dict[int, str]`, *optional*):
            Class names for the legend, e.g. `model.config.id2label`. Without it the legend shows class ids.
        palette (`str` or `list[tuple[int, int, int]]`, *optional*):
            `"cityscapes"`, `"ade20k"`, a list of RGB colours indexed by class, or `None` for generated colours.
            Instances of the same thing class get different shades of the class colour.
        alpha (`float`, *optional*, defaults to 0.6):
            Opacity of the colours over the image.
        show_legend (`bool`, *optional*, defaults to `True`):
            Add a legend panel on the right.
        ignore_index (`int`, *optional*, defaults to 255):
            Class id left uncoloured in semantic maps (e.g. the ignored pixels of a ground-truth map).

    Returns:
        `PIL.Image.Image`: the RGB overlay (plus legend).
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the colours' opacity, in [0, 1]; got {alpha!r}.")
    if isinstance(segmentation, dict):
        raise ValueError(
            "segmentation is a post-processing result: pass result['segmentation'] and result['segments_info']."
        )
    segmentation = segmentation.cpu().numpy() if isinstance(segmentation, torch.Tensor) else np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise ValueError(
            f"segmentation must be a (height, width) map, got shape {segmentation.shape}; instance results need the "
            "default format (not return_binary_maps / return_coco_annotation)."
        )
    if segmentation.dtype.kind not in "iub" and not (
        segmentation.dtype.kind == "f" and np.array_equal(segmentation, np.round(segmentation))
    ):
        raise ValueError(
            f"segmentation must hold integer class or segment ids, got dtype {segmentation.dtype} with fractions: "
            "pass a label map (e.g. the argmax of scores), not scores or probabilities."
        )
    if segments_info is not None and not all(
        isinstance(s, dict) and {"id", "label_id"} <= s.keys() for s in segments_info
    ):
        raise ValueError("segments_info entries need 'id' and 'label_id' (as post-processing returns them).")
    if segments_info is None:
        labels = [int(label) for label in np.unique(segmentation) if label != ignore_index]
        segments = [(segmentation == label, label, 0) for label in labels]
    else:
        instance_counts: dict[int, int] = {}
        segments = []
        for segment in segments_info:
            label = int(segment["label_id"])
            shade = 0 if segment.get("was_fused", False) else instance_counts.get(label, 0)
            instance_counts[label] = shade + 1
            segments.append((segmentation == segment["id"], label, shade))
    if any(label < 0 for _, label, _ in segments):
        raise ValueError("Class ids must be non-negative; pass the ignored value as ignore_index.")
    num_labels = max([len(id2label) if id2label else 0] + [label + 1 for _, label, _ in segments])
    colours = get_palette(palette, num_labels)

    height, width = segmentation.shape
    colour_map = np.zeros((height, width, 3), dtype=np.float32)
    coloured = np.zeros((height, width), dtype=bool)
    for mask, label, shade in segments:
        colour_map[mask] = _shade(colours[label], shade)
        coloured |= mask

    if image is None:
        overlay = colour_map
    else:
        background = np.asarray(
            image.convert("RGB") if isinstance(image, PIL.Image.Image) else image, dtype=np.float32
        )
        if background.shape != (height, width, 3):
            raise ValueError(
                f"The image has shape {background.shape} but the segmentation is {height}x{width}: post-process with "
                "target_sizes=[(image height, image width)] or resize the image."
            )
        overlay = background.copy()
        overlay[coloured] = (1 - alpha) * background[coloured] + alpha * colour_map[coloured]
    result = PIL.Image.fromarray(np.round(overlay).clip(0, 255).astype(np.uint8))

    if show_legend:
        areas: dict[int, int] = {}
        for mask, label, _ in segments:
            areas[label] = areas.get(label, 0) + int(mask.sum())
        by_area = [label for label in sorted(areas, key=areas.get, reverse=True) if areas[label] > 0]
        result = _add_legend(result, [(label_name(label, id2label), colours[label]) for label in by_area])
    return result


def _shade(colour: tuple[int, int, int], shade: int) -> np.ndarray:
    """Shade `n` of a class colour, to tell instances apart: the colour itself, then lighter and darker variants."""
    step = _SHADE_STEPS[shade % len(_SHADE_STEPS)]
    colour = np.array(colour, dtype=np.float32)
    return colour + (255.0 - colour) * step if step > 0 else colour * (1.0 + step)


def label_name(label: int, id2label: dict[int, str] | None) -> str:
    if id2label is None:
        return str(label)
    return str(id2label.get(label, id2label.get(str(label), label)))


def _add_legend(image: PIL.Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> PIL.Image.Image:
    """A white panel right of the image with one colour swatch and name per entry (several columns if needed)."""
    if not entries:
        return image
    font_size = max(10, min(24, image.height // 20))
    font = PIL.ImageFont.load_default(size=font_size)
    row_height = font_size + 6
    rows_per_column = max(1, (image.height - 8) // row_height)
    columns = [entries[i : i + rows_per_column] for i in range(0, len(entries), rows_per_column)]
    measure = PIL.ImageDraw.Draw(image)
    column_widths = [
        font_size + 12 + max(int(measure.textlength(name, font=font)) for name, _ in column) for column in columns
    ]
    legend_height = max(image.height, 8 + min(len(entries), rows_per_column) * row_height)
    canvas = PIL.Image.new("RGB", (image.width + sum(column_widths) + 8, legend_height), "white")
    canvas.paste(image, (0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    x = image.width + 8
    for column, column_width in zip(columns, column_widths):
        for row, (name, colour) in enumerate(column):
            y = 4 + row * row_height
            draw.rectangle([x, y + 2, x + font_size, y + 2 + font_size], fill=tuple(colour), outline="black")
            draw.text((x + font_size + 6, y), name, fill="black", font=font)
        x += column_width
    return canvas
