"""Colour overlays of PEM segmentation results, with a legend of the label names; training curves."""

import colorsys
import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .configuration_pem import MASK_STRIDE, SIZE_DIVISOR, padded_size
from .labels_pem import DATASET_LABELS
from .post_processing_pem import valid_sizes
from .utils_pem import require

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
    image: "PIL.Image.Image | np.ndarray | None",
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
            The image the result belongs to, at the result's size (post-process with `target_sizes` = the image size).
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
    segmentation = segmentation.cpu().numpy() if isinstance(segmentation, torch.Tensor) else np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise ValueError(
            f"segmentation must be a (height, width) map, got shape {segmentation.shape}; instance results need the "
            "default format (not return_binary_maps / return_coco_annotation)."
        )
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
        result = _add_legend(result, [(_label_name(label, id2label), colours[label]) for label in by_area])
    return result


def _shade(colour: tuple[int, int, int], shade: int) -> np.ndarray:
    """Shade `n` of a class colour, to tell instances apart: the colour itself, then lighter and darker variants."""
    step = _SHADE_STEPS[shade % len(_SHADE_STEPS)]
    colour = np.array(colour, dtype=np.float32)
    return colour + (255.0 - colour) * step if step > 0 else colour * (1.0 + step)


def _label_name(label: int, id2label: dict[int, str] | None) -> str:
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


# ---------------------------------------------------------------------------------------------------------------------
# Prototypes: the token PEM-CA selects per query and head in every decoder layer
# ---------------------------------------------------------------------------------------------------------------------

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
        panel_width (`int`, *optional*, defaults to 256): the width of each panel.
    """
    if outputs.prototype_indices is None:
        raise ValueError("The outputs have no prototype indices: run the model with output_prototype_indices=True.")
    queries = kept_queries(outputs, batch_index, threshold) if queries is None else list(queries)
    masks = outputs.masks_queries_logits[batch_index].float()
    padded = padded_input_size(outputs.masks_queries_logits)
    pixel_mask = getattr(outputs, "pixel_mask", None)
    valid = valid_sizes(pixel_mask)[batch_index] if pixel_mask is not None else padded
    scale = panel_width / image.width
    size = (panel_width, max(1, round(image.height * scale)))
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
        name = _label_name(int(label), id2label)
        draw.text((2, top), f"query {query}: {name} {float(score):.2f}", fill="black", font=font)
        canvas.paste(PIL.Image.fromarray(overlay.astype(np.uint8)), (0, top + caption))
        for layer, layer_locations in enumerate(locations):
            left = (layer + 1) * (size[0] + 4)
            stride = _LEVEL_STRIDES[layer % len(_LEVEL_STRIDES)]
            draw.text((left + 2, top), f"layer {layer + 1} (stride {stride})", fill="black", font=font)
            canvas.paste(draw_prototype_panel(picture, layer_locations[:, query]), (left, top + caption))
    return canvas


__all__ = [
    "PALETTES",
    "draw_prototype_panel",
    "draw_prototypes",
    "draw_segmentation",
    "get_palette",
    "head_colours",
    "kept_queries",
    "prototype_locations",
]


# A training run's scalars (JSON lines, one object per step or evaluation) and the picture drawn from them.
SCALARS_FILE = "scalars.jsonl"
CURVES_FILE = "curves.png"
# Training losses are drawn raw and as a moving average over this many steps.
SMOOTHING_STEPS = 25


def read_scalars(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """`{name: (steps, values)}` from a `scalars.jsonl` file, in step order; a later entry for the same step and name
    (a re-evaluation after BatchNorm recomputation) replaces the earlier one."""
    series: dict[str, dict[int, float]] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        step = entry.pop("step")
        for name, value in entry.items():
            series.setdefault(name, {})[step] = value
    return {name: (sorted(values), [values[s] for s in sorted(values)]) for name, values in series.items()}


def _moving_average(values: list[float], window: int) -> np.ndarray:
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(len(values)) + 1 - counts]) / counts


def plot_training_curves(scalars_path: str | os.PathLike, output_path: str | os.PathLike | None = None) -> Path:
    """
    Draw a run's curves from its `scalars.jsonl` to a PNG (default: `curves.png` beside it): the training loss and
    its terms (raw and smoothed), the learning rate, and the evaluation metrics if the run evaluated. Returns the path.
    """
    figure_module = require("matplotlib.figure", "train", "Drawing training curves")
    scalars_path = Path(scalars_path)
    if scalars_path.is_dir():
        scalars_path = scalars_path / SCALARS_FILE
    if not scalars_path.is_file():
        raise FileNotFoundError(f"No {SCALARS_FILE} at {scalars_path}: pass a training run folder or its scalars.")
    series = read_scalars(scalars_path)
    if "train/loss" not in series:
        raise ValueError(f"{scalars_path} holds no training step (no train/loss entry).")
    losses = [name for name in series if name.startswith("train/loss")]
    metrics = [name for name in series if name.startswith("eval/")]
    panels = [("training loss", losses), ("learning rate", ["train/lr"])]
    if metrics:
        panels.append(("evaluation", metrics))
    # A Figure without pyplot: no global backend or state is touched in the caller's process.
    figure = figure_module.Figure(figsize=(5 * len(panels), 4), layout="constrained")
    for axes, (title, names) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            steps, values = series[name]
            label = name.split("/", 1)[1]
            if title == "training loss":
                line = axes.plot(steps, _moving_average(values, SMOOTHING_STEPS), label=label)[0]
                axes.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
            else:
                axes.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
        if title == "training loss":
            axes.set_yscale("log")
        axes.set(title=title, xlabel="step")
        if len(names) > 1:
            axes.legend(fontsize="small")
    output_path = Path(output_path) if output_path is not None else scalars_path.with_name(CURVES_FILE)
    figure.savefig(output_path, dpi=100)
    return output_path
