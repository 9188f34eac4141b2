"""Segmenting image files, folders, glob patterns and videos: what `pem predict` runs.

For every image (or video frame) it writes a colour overlay with a legend, the label files of the official formats
(see [`PredictionExporter`]: Cityscapes `labelIds` / ADE20K challenge PNGs, COCO-panoptic PNG + JSON, COCO instance
results) and one JSON of segments. Unreadable files are skipped with a warning and counted; nothing else is lost.

```python
>>> from transformers_pem.app.files import segment_files
>>> summary = segment_files("checkpoints/pem-stdc1-cityscapes", "street/*.jpg", "predictions", task="panoptic")
```
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..data.sources import find_sources, read_frames
from ..deploy.runtimes import check_model_directory, check_runtime, load_model
from ..evaluation.submission import PredictionExporter
from ..inference.predictor import predict
from ..labels_pem import dataset_for
from ..presets_pem import check_task
from ..visualization.segmentation import draw_segmentation

logger = logging.getLogger(__name__)


@dataclass
class SegmentationSummary:
    """What `segment_files` did: images segmented, files skipped (with the reason), where the outputs are."""

    output_dir: Path
    segmented: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


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
    runtime: str = "pytorch",
    model_file: str | None = None,
) -> SegmentationSummary:
    """Segment every image or video frame of `source` (see [`find_sources`]) with the checkpoint `model` and write,
    under `output_dir`: `overlays/<name>.png`, `segments/<name>.json`, and the official label files
    (`semantic/`, or `panoptic/` + `panoptic.json`, or `instances.json`). `runtime`: `"pytorch"`, or `"onnx"` /
    `"openvino"` for a `pem export` directory (see `deploy.runtimes`), `model_file` its file if not the default."""
    from transformers import AutoImageProcessor

    check_task(task)
    check_runtime(runtime, device, model_file=model_file)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    check_model_directory(model)
    paths = find_sources(source)
    network = load_model(model, runtime, device, model_file)
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
