"""A Gradio web app for a PEM checkpoint: upload an image (or pick an example), choose the task, and see the colour
overlay with its legend, a table of the segments, the label PNG to download and PEM's prototypes. `pem app --model
DIR` serves it; `app.py` at the repository root is the same app for a Hugging Face Space.
"""

import html
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..deploy.runtimes import load_model
from ..inference.allocator import tune_glibc_malloc
from ..labels_pem import dataset_for
from ..presets_pem import TASKS, check_task
from ..utils.extras import require
from ..visualization.prototypes import draw_prototypes, kept_queries
from ..visualization.segmentation import draw_segmentation
from .files import segments_record

TABLE_HEADERS = ["label", "score", "area (pixels)"]


class Segmenter:
    """A checkpoint on the fast inference path (BatchNorm folded, or an exported `runtime`: see `deploy.runtimes`),
    and what the app shows of one image: overlay, segment rows, label PNG, prototypes (PyTorch only: the exported
    models return the logits alone). `build_app` also tunes the process's allocator."""

    def __init__(
        self, model: str | os.PathLike, device: str = "cpu", runtime: str = "pytorch", model_file: str | None = None
    ):
        from transformers import AutoImageProcessor

        self.model = load_model(model, runtime, device, model_file)
        if runtime == "pytorch":
            self.model.fold_batch_norm()
        self.runtime = runtime
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.id2label = {int(index): str(name) for index, name in self.model.config.id2label.items()}
        self.palette = dataset_for(self.id2label)
        things = self.processor.thing_ids
        self.thing_ids = set(things if things is not None else self.id2label)
        self.device = device

    @torch.inference_mode()
    def __call__(self, image: PIL.Image.Image, task: str) -> tuple[PIL.Image.Image, list[list], str, PIL.Image.Image]:
        if image is None:
            raise ValueError("Upload an image first.")
        check_task(task)
        image = image.convert("RGB")
        inputs = self.processor(image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs, output_prototype_indices=self.runtime == "pytorch")
        target = {"target_sizes": [(image.height, image.width)], "pixel_mask": inputs["pixel_mask"]}
        if task == "semantic":
            prediction = {"semantic": self.processor.post_process_semantic_segmentation(outputs, **target)[0]}
        elif task == "panoptic":
            prediction = {"panoptic": self.processor.post_process_panoptic_segmentation(outputs, **target)[0]}
        else:
            result = self.processor.post_process_instance_segmentation(outputs, **target, return_binary_maps=True)[0]
            prediction = {"instance": result}
        record, segmentation, segments_info = segments_record(
            "upload", Path("upload"), task, prediction, self.id2label, self.thing_ids
        )
        overlay = draw_segmentation(image, segmentation, segments_info, self.id2label, palette=self.palette)
        rows = [
            [segment["label"], round(segment["score"], 3) if "score" in segment else None, segment["area"]]
            for segment in sorted(record["segments"], key=lambda segment: -segment["area"])
        ]
        label_png = Path(tempfile.mkdtemp()) / f"{task}.png"
        PIL.Image.fromarray(_label_map(segmentation, task)).save(label_png)
        prototypes = None
        if outputs.prototype_indices is not None:
            queries = kept_queries(outputs) or list(range(min(3, outputs.class_queries_logits.shape[1])))
            prototypes = draw_prototypes(image, outputs, queries=queries[:4], id2label=self.id2label)
        return overlay, rows, str(label_png), prototypes


def segments_table(rows: list[list]) -> str:
    """The segments as an HTML table (label, score, area)."""
    header = "".join(f"<th>{html.escape(name)}</th>" for name in TABLE_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if value is None else str(value))}</td>" for value in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _label_map(segmentation: np.ndarray, task: str) -> np.ndarray:
    """The label PNG of a result: class ids (semantic) or segment ids (panoptic / instance, 0 = none), 8 or 16 bit."""
    values = segmentation + 1 if task == "instance" else segmentation  # instance ids start at 0, -1 = background
    return values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)


def build_app(
    model: str | os.PathLike,
    examples: list[str] | None = None,
    device: str = "cpu",
    runtime: str = "pytorch",
    model_file: str | None = None,
):
    """The Gradio Blocks app of a checkpoint (or of an export directory run by `runtime`); `examples` are image paths
    offered below the upload."""
    gr = require("gradio", "app", "The web app")
    tune_glibc_malloc()  # the serving process reuses the memory it frees (see `tune_glibc_malloc`)
    segmenter = Segmenter(model, device=device, runtime=runtime, model_file=model_file)

    def run(image, task):
        try:
            overlay, rows, label_png, prototypes = segmenter(image, task)
            return overlay, segments_table(rows), label_png, prototypes
        except ValueError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title="PEM segmentation") as app:
        gr.Markdown(
            "# PEM: Prototype-based Efficient MaskFormer\n"
            f"Checkpoint `{Path(model).name}`: {len(segmenter.id2label)} classes. Upload an image, choose the task."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="pem-input")
                task = gr.Radio(list(TASKS), value="panoptic", label="Task", elem_id="pem-task")
                button = gr.Button("Segment", variant="primary", elem_id="pem-run")
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[image])
            with gr.Column():
                overlay = gr.Image(type="pil", label="Segmentation", elem_id="pem-overlay", interactive=False)
                table = gr.HTML(label="Segments", elem_id="pem-segments")
                label_png = gr.File(label="Label PNG", elem_id="pem-labels")
        prototypes = gr.Image(type="pil", label="Prototypes per decoder layer", elem_id="pem-prototypes")
        button.click(run, inputs=[image, task], outputs=[overlay, table, label_png, prototypes])
    return app


__all__ = ["Segmenter", "build_app"]
