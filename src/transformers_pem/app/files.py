"""Segmenting image files, folders, glob patterns and videos: what `pem predict` runs.

For every image (or video frame) it writes a colour overlay with a legend, the label files of the official formats
(see [`PredictionExporter`]: Cityscapes `labelIds` / ADE20K challenge PNGs, COCO-panoptic PNG + JSON, COCO instance
results) and one JSON of segments, named by the file's path under the source (`a/img.png` -> `overlays/a/img.png.png`).
Unreadable files are skipped with a warning and counted. Every file is written atomically, an image's segments JSON
last; the COCO JSON files are rewritten from those when the run ends, however it ends, so an interrupted run leaves
consistent outputs that `resume=True` continues. A run file (`pem-predict.json`) says which model and task wrote the
folder: a run of other settings is refused, and one process at a time writes to a folder.

```python
>>> from transformers_pem.app.files import segment_files
>>> summary = segment_files("checkpoints/pem-stdc1-cityscapes", "street/*.jpg", "predictions", task="panoptic")
```
"""

import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import filelock  # huggingface_hub's dependency
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..data.sources import find_sources, read_frames, source_name, source_root
from ..deploy.runtimes import check_device, check_model_directory, check_runtime, load_model
from ..evaluation.submission import PredictionExporter
from ..inference.predictor import predict
from ..labels_pem import dataset_for
from ..presets_pem import check_task
from ..utils.paths import atomic_file, check_output_dir
from ..visualization.segmentation import draw_segmentation

logger = logging.getLogger(__name__)

RUN_FILE = "pem-predict.json"
LOCK_FILE = ".pem-predict.lock"
# What a run writes: removed by `overwrite=True`, and what marks a folder as holding results.
OUTPUTS = ("overlays", "segments", "semantic", "panoptic", "panoptic.json", "instances.json", RUN_FILE)


@dataclass
class SegmentationSummary:
    """What `segment_files` did: images segmented, images an earlier run had done (`resume`), files skipped (with
    the reason), where the outputs are."""

    output_dir: Path
    segmented: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
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


def _write_json(path: Path, value) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(value, indent=1))


@contextmanager
def _locked(output_dir: Path) -> Iterator[None]:
    """Hold the folder's lock while the block runs, or refuse: two runs never write to one folder together."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(output_dir / LOCK_FILE, timeout=0)  # flock on POSIX, msvcrt on Windows
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(
            f"Another pem predict is writing to {output_dir}: wait for it to end, or pass another output folder."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _earlier_results(output_dir: Path, settings: dict, resume: bool, overwrite: bool) -> dict[str, dict]:
    """The segment records of the run that wrote `output_dir` before (by image name), when this run continues it
    (`resume`); `overwrite` removes that run's outputs instead. Refuses to mix runs of other settings, or to
    overwrite results silently."""
    present = [name for name in OUTPUTS if (output_dir / name).exists()]
    if not present:
        return {}
    if overwrite:
        for name in present:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return {}
    run_file = output_dir / RUN_FILE
    try:
        earlier = json.loads(run_file.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{output_dir} holds outputs ({', '.join(present)}) that no readable {RUN_FILE} describes: pass another "
            "output folder, or --overwrite to replace them."
        ) from None
    if earlier != settings:
        differences = ", ".join(f"{key} {earlier.get(key)!r}" for key in settings if earlier.get(key) != settings[key])
        raise ValueError(
            f"{output_dir} holds the results of a run with {differences}: pass another output folder, or --overwrite "
            "to replace them."
        )
    records = {}
    for path in sorted((output_dir / "segments").rglob("*.json")):
        try:
            record = json.loads(path.read_text())
            records[record["image"]] = record
        except (OSError, ValueError, KeyError, TypeError):  # not written by a run: the image is segmented again
            continue
    if not resume:
        raise ValueError(
            f"{output_dir} holds the results of an earlier run ({len(records)} images): pass --resume to add to "
            "them (images done are skipped), --overwrite to replace them, or another output folder."
        )
    return records


def _check_names(names: dict[Path, str], done: dict[str, dict], output_dir: Path) -> None:
    """Refuse a resumed run whose file would take a name the earlier run gave to another file (a run from another
    folder: names are relative to the source)."""
    earlier = {}
    for name, record in done.items():
        earlier[name] = earlier[name.rpartition("/")[0]] = record["source"]  # a frame's file: its parent name
    for path, name in names.items():
        if name in earlier and Path(earlier[name]).resolve() != path.resolve():
            raise ValueError(
                f"{path} would be named {name!r}, which the earlier run in {output_dir} gave to {earlier[name]}: "
                "resume from the earlier run's source folder, or pass another output folder."
            )


def _read_images(
    names: dict[Path, str], done: dict[str, dict], summary: SegmentationSummary
) -> Iterator[tuple[str, Path, PIL.Image.Image]]:
    """`(name, path, image)` of every image and video frame not done yet; a file that cannot be read is skipped
    (logged, and counted in `summary`) whatever its decoder raised."""
    for path, name in names.items():
        if name in done:
            continue
        try:
            for frame_name, image in read_frames(path, name):
                if frame_name not in done:
                    yield frame_name, path, image
        except Exception as error:  # noqa: BLE001 - one unreadable file is skipped whatever its decoder raised
            reason = str(error).splitlines()[0].removeprefix(f"{path}: ") if str(error) else repr(error)
            logger.warning("Skipped %s: %s", path, reason)
            summary.skipped[str(path)] = reason


class _ResultWriter:
    """Writes one image's outputs (overlay, label files, segments JSON last: an image counts as done once its
    record exists) and, on `close`, the COCO JSON files of every image done, earlier runs' included, in name order:
    a resumed run's files equal an uninterrupted run's."""

    def __init__(self, output_dir: Path, task: str, id2label: dict[int, str], thing_ids: set[int], done: dict):
        self.output_dir, self.task, self.id2label, self.thing_ids = output_dir, task, id2label, thing_ids
        self.dataset = dataset_for(id2label)
        self.exporter = PredictionExporter(output_dir, id2label, sorted(thing_ids), self.dataset)
        self.entries = {
            name: record["annotation_entries"] for name, record in done.items() if "annotation_entries" in record
        }

    def write(self, name: str, path: Path, image: PIL.Image.Image, prediction: dict) -> None:
        record, segmentation, segments_info = segments_record(
            name, path, self.task, prediction, self.id2label, self.thing_ids
        )
        overlay = draw_segmentation(image, segmentation, segments_info, self.id2label, palette=self.dataset)
        with atomic_file(self.output_dir / "overlays" / f"{name}.png") as overlay_path:
            overlay.save(overlay_path, format="PNG")
        if self.task == "semantic":
            self.exporter.add_semantic(name, segmentation)
        elif self.task == "panoptic":
            record["annotation_entries"] = self.exporter.add_panoptic(name, segmentation, segments_info)
        else:
            masks = prediction["instance"]["segmentation"].cpu().numpy()
            record["annotation_entries"] = self.exporter.add_instance(name, masks, segments_info)
        _write_json(self.output_dir / "segments" / f"{name}.json", record)
        if "annotation_entries" in record:
            self.entries[name] = record["annotation_entries"]

    def close(self) -> None:
        self.exporter.replace_entries(self.entries[name] for name in sorted(self.entries))
        self.exporter.close()


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
    resume: bool = False,
    overwrite: bool = False,
) -> SegmentationSummary:
    """Segment every image or video frame of `source` (see [`find_sources`]; files under `output_dir` are left out)
    with the checkpoint `model` and write, under `output_dir`: `overlays/<name>.png`, `segments/<name>.json`, and
    the official label files (`semantic/`, or `panoptic/` + `panoptic.json`, or `instances.json`); `<name>` is the
    file's path under the source, a video's frames `<name>/<frame>`. `runtime`: `"pytorch"`, or `"onnx"` /
    `"openvino"` for a `pem export` directory (see `deploy.runtimes`), `model_file` its file if not the default.
    A folder that holds results of the same model and task is continued with `resume` (images done are skipped) or
    replaced with `overwrite`; otherwise it is refused. Everything is checked before the model loads."""
    from transformers import AutoImageProcessor

    check_task(task)
    check_runtime(runtime, device, model_file=model_file)
    check_device(device)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}.")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pick one.")
    check_model_directory(model)
    output_dir = check_output_dir(output_dir, "--out")
    paths = find_sources(source, exclude=output_dir)
    root = source_root(source)
    settings = {
        "model": str(Path(model).resolve()),
        "runtime": runtime,
        "model_file": model_file,
        "task": task,
    }
    summary = SegmentationSummary(output_dir)
    names = {path: source_name(path, root) for path in paths}
    with _locked(output_dir):
        done = _earlier_results(output_dir, settings, resume, overwrite)
        _check_names(names, done, output_dir)
        network = load_model(model, runtime, device, model_file)
        processor = AutoImageProcessor.from_pretrained(model)
        id2label = {int(index): str(name) for index, name in network.config.id2label.items()}
        thing_ids = set(processor.thing_ids if processor.thing_ids is not None else id2label)
        writer = _ResultWriter(output_dir, task, id2label, thing_ids, done)
        summary.resumed = list(done)
        _write_json(output_dir / RUN_FILE, {"settings": settings, "status": "running"})
        status = "interrupted"
        try:
            images = _read_images(names, done, summary)
            with torch.inference_mode(), tqdm(unit="img", desc=f"Segmenting ({task})", disable=not progress) as bar:
                while batch := list(itertools.islice(images, batch_size)):
                    # The semantic output is computed only when it is what was asked for.
                    predictions = predict(
                        network,
                        processor,
                        [image for _, _, image in batch],
                        task=task,
                        batch_size=batch_size,
                        return_semantic=False,
                    )
                    for (name, path, image), prediction in zip(batch, predictions):
                        writer.write(name, path, image, prediction)
                        summary.segmented.append(name)
                    bar.update(len(batch))
            status = "complete"
        except KeyboardInterrupt:
            raise
        except BaseException:
            status = "failed"
            raise
        finally:  # however the run ends, the COCO files hold exactly the images whose records were written
            writer.close()
            counts = {"segmented": len(summary.segmented) + len(summary.resumed), "skipped": summary.skipped}
            _write_json(output_dir / RUN_FILE, {"settings": settings, "status": status, **counts})
    return summary


__all__ = ["SegmentationSummary", "find_sources", "read_frames", "segment_files"]
