"""Segmenting image files, folders, glob patterns and videos: what `pem predict` runs.

For every image (or video frame) it writes a colour overlay with a legend, the label files of the official formats
(see [`PredictionExporter`]: Cityscapes `labelIds` / ADE20K challenge PNGs, COCO-panoptic PNG + JSON, COCO instance
results) and one JSON of segments. Unreadable files are skipped with a warning and counted; nothing else is lost.

```python
>>> from transformers_pem.inference.media import segment_files
>>> summary = segment_files("checkpoints/pem-stdc1-cityscapes", "street/*.jpg", "predictions", task="panoptic")
```
"""

import glob
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..evaluation.submission import PredictionExporter
from ..labels_pem import dataset_for
from ..presets_pem import check_task
from ..utils.extras import require
from ..visualization.segmentation import draw_segmentation
from .predictor import predict

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class SegmentationSummary:
    """What `segment_files` did: images segmented, files skipped (with the reason), where the outputs are."""

    output_dir: Path
    segmented: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def find_sources(source: str | os.PathLike) -> list[Path]:
    """The image and video files of `source`: one file, the files of a folder (recursively, sorted) or of a glob
    pattern. Raises a `ValueError` if there are none."""
    text = str(source)
    if any(character in text for character in "*?["):
        paths = [Path(path) for path in sorted(glob.glob(text, recursive=True))]
    elif Path(text).is_dir():
        paths = sorted(path for path in Path(text).rglob("*") if path.is_file())
    elif Path(text).is_file():
        return [Path(text)]
    else:
        raise ValueError(f"{text} does not exist: pass an image, a video, a folder or a glob pattern (quoted).")
    paths = [path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
    if not paths:
        raise ValueError(
            f"No images or videos found in {text} (looked for {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})."
        )
    return paths


def read_frames(path: Path) -> Iterator[tuple[str, PIL.Image.Image]]:
    """`(name, RGB image)` of an image file, or of every frame of a video (`<stem>_<frame>`, read with PyAV).
    Unreadable files raise `OSError` or `ValueError`."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        with PIL.Image.open(path) as image:
            yield path.stem, image.convert("RGB")
        return
    av = require("av", "video", "Reading videos")
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                yield f"{path.stem}_{index:06d}", frame.to_image().convert("RGB")
    except av.FFmpegError as error:
        raise ValueError(f"cannot decode the video: {error}") from error


def segments_record(
    name: str, source: Path, task: str, prediction: dict, id2label: dict, thing_ids: set[int]
) -> tuple[dict, np.ndarray, list[dict] | None]:
    """The JSON record of one image's result, and the map and segments to draw."""
    if task == "semantic":
        classes = prediction["semantic"].cpu().numpy()
        labels, areas = np.unique(classes, return_counts=True)
        segments = [
            {"label_id": int(label), "label": id2label[int(label)], "area": int(area)}
            for label, area in zip(labels, areas)
        ]
        segmentation, segments_info = classes, None
    else:
        result = prediction[task]
        if task == "instance":  # binary masks, best first: the best-scoring instance ends on top
            masks = result["segmentation"].cpu().numpy()
            segmentation = np.full(masks.shape[1:], -1, np.int32)
            for index in reversed(range(len(masks))):
                segmentation[masks[index]] = index
        else:
            segmentation = result["segmentation"].cpu().numpy()
        segments_info = result["segments_info"]
        ids, areas = np.unique(segmentation, return_counts=True)
        area_of = dict(zip(ids.tolist(), areas.tolist()))
        segments = [
            {
                "id": int(segment["id"]),
                "label_id": int(segment["label_id"]),
                "label": id2label[int(segment["label_id"])],
                "score": round(float(segment["score"]), 6),
                "area": int(area_of.get(segment["id"], 0)),
                "isthing": segment["label_id"] in thing_ids,
            }
            for segment in segments_info
        ]
    record = {
        "image": name,
        "source": str(source),
        "task": task,
        "size": list(segmentation.shape),
        "segments": segments,
    }
    return record, segmentation, segments_info


def segment_files(
    model: str | os.PathLike,
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str = "panoptic",
    batch_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> SegmentationSummary:
    """Segment every image or video frame of `source` (see [`find_sources`]) with the checkpoint `model` and write,
    under `output_dir`: `overlays/<name>.png`, `segments/<name>.json`, and the official label files
    (`semantic/`, or `panoptic/` + `panoptic.json`, or `instances.json`)."""
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    check_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if not (Path(model) / "config.json").is_file():
        raise ValueError(f"{model} is not a saved PEM model (no config.json): pass a save_pretrained directory.")
    paths = find_sources(source)
    network = AutoModelForUniversalSegmentation.from_pretrained(model).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model)
    id2label = {int(index): str(name) for index, name in network.config.id2label.items()}
    thing_ids = set(processor.thing_ids if processor.thing_ids is not None else id2label)
    dataset = dataset_for(id2label)
    output_dir = Path(output_dir)
    for folder in ("overlays", "segments"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    exporter = PredictionExporter(output_dir, id2label, sorted(thing_ids), dataset)
    summary = SegmentationSummary(output_dir)

    def flush(batch: list[tuple[str, Path, PIL.Image.Image]]) -> None:
        images = [image for _, _, image in batch]
        # The semantic output is computed only when it is what was asked for.
        predictions = predict(network, processor, images, task=task, batch_size=batch_size, return_semantic=False)
        for (name, path, image), prediction in zip(batch, predictions):
            record, segmentation, segments_info = segments_record(name, path, task, prediction, id2label, thing_ids)
            overlay = draw_segmentation(image, segmentation, segments_info, id2label, palette=dataset)
            overlay.save(output_dir / "overlays" / f"{name}.png")
            (output_dir / "segments" / f"{name}.json").write_text(json.dumps(record, indent=1))
            if task == "semantic":
                exporter.add_semantic(name, segmentation)
            elif task == "panoptic":
                exporter.add_panoptic(name, segmentation, segments_info)
            else:
                exporter.add_instance(name, prediction["instance"]["segmentation"].cpu().numpy(), segments_info)
            summary.segmented.append(name)

    batch: list[tuple[str, Path, PIL.Image.Image]] = []
    with torch.inference_mode(), tqdm(unit="img", desc=f"Segmenting ({task})", disable=not progress) as bar:
        for path in paths:
            try:
                for name, image in read_frames(path):
                    batch.append((name, path, image))
                    if len(batch) == batch_size:
                        flush(batch)
                        bar.update(len(batch))
                        batch = []
            except (OSError, ValueError, PIL.UnidentifiedImageError) as error:
                logger.warning("Skipped %s: %s", path, error)
                summary.skipped[str(path)] = str(error)
        if batch:
            flush(batch)
            bar.update(len(batch))
    exporter.close()
    return summary


__all__ = ["SegmentationSummary", "find_sources", "read_frames", "segment_files"]
