"""A Gradio web app for a PEM checkpoint: upload an image (or pick an example), choose the task, and see the colour
overlay with its legend, a table of the segments, the label PNG to download and PEM's prototypes. `pem app --model
DIR` serves it; `app.py` at the repository root is the same app for a Hugging Face Space.
"""

import gc
import html
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..deploy.runtimes import check_device, load_model
from ..image_loading_pem import image_to_rgb, load_image, open_image
from ..inference.allocator import release_free_memory, tune_glibc_malloc
from ..labels_pem import dataset_for
from ..presets_pem import TASKS, check_task
from ..utils.extras import require
from ..visualization.prototypes import draw_prototypes, kept_queries
from ..visualization.segmentation import draw_segmentation
from .files import segments_record

TABLE_HEADERS = ["label", "score", "area (pixels)"]
# Uploads larger than this are refused: time and memory grow with the output size (the README has figures).
MAX_PIXELS = 24_000_000
MAX_UPLOAD = "50mb"
# Above this size a request's freed memory is handed back to the system once it is done.
RELEASE_PIXELS = 4_000_000


class Segmenter:
    """A checkpoint on the fast inference path (BatchNorm folded, or an exported `runtime`: see `deploy.runtimes`),
    and what the app shows of one image: overlay, segment rows, label PNG, prototypes (PyTorch only: the exported
    models return the logits alone). Images of more than `max_pixels` are refused. `build_app` also tunes the
    process's allocator."""

    def __init__(
        self,
        model: str | os.PathLike,
        device: str = "cpu",
        runtime: str = "pytorch",
        model_file: str | None = None,
        max_pixels: int = MAX_PIXELS,
    ):
        from transformers import AutoImageProcessor

        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels!r}.")
        check_device(device)
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
        self.max_pixels = max_pixels
        # The label PNGs of the requests, removed with the app (gradio serves its own copy of each).
        self.files = tempfile.TemporaryDirectory(prefix="pem-app-")

    def read(self, image: "str | os.PathLike | PIL.Image.Image | None") -> PIL.Image.Image:
        """The upload as RGB (`image_loading_pem`: EXIF orientation, 16-bit and float images, transparency), after
        its size is checked from the header alone."""
        if image is None:
            raise ValueError("Upload an image first.")
        if isinstance(image, PIL.Image.Image):
            width, height = image.size
        else:
            with open_image(image, decode=False) as header:
                width, height = header.size
        if width * height > self.max_pixels:
            raise ValueError(
                f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels): this app takes up to "
                f"{self.max_pixels / 1e6:g} megapixels. Downscale it first (pem app --max-pixels raises the limit)."
            )
        return image_to_rgb(image) if isinstance(image, PIL.Image.Image) else load_image(image)

    def __call__(
        self, image: "str | os.PathLike | PIL.Image.Image | None", task: str
    ) -> tuple[PIL.Image.Image, list[list], str, PIL.Image.Image | None]:
        """Segment one image (a path or a PIL image): the overlay, the segment rows, the label PNG's path (valid
        until the next call) and the prototype view."""
        check_task(task)
        image = self.read(image)
        try:
            return self._segment(image, task)
        finally:
            if image.width * image.height > RELEASE_PIXELS:  # a large request's memory goes back to the system
                gc.collect()
                release_free_memory()

    @torch.inference_mode()
    def _segment(self, image: PIL.Image.Image, task: str) -> tuple:
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
        label_png = Path(self.files.name) / f"{task}.png"
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
    max_pixels: int = MAX_PIXELS,
):
    """The Gradio Blocks app of a checkpoint (or of an export directory run by `runtime`); `examples` are image paths
    offered below the upload; uploads of more than `max_pixels` are refused with a message. Launch it with
    `launch(max_file_size=MAX_UPLOAD, show_error=True)`: uploads are bounded in size too, and what gradio's own
    reader refuses (a file that is not an image) is shown to the user, not a generic error."""
    gr = require("gradio", "app", "The web app")
    tune_glibc_malloc()  # the serving process reuses the memory it frees (see `tune_glibc_malloc`)
    segmenter = Segmenter(model, device=device, runtime=runtime, model_file=model_file, max_pixels=max_pixels)

    def run(image, task):
        try:
            overlay, rows, label_png, prototypes = segmenter(image, task)
            return overlay, segments_table(rows), label_png, prototypes
        except ValueError as error:
            raise gr.Error(str(error)) from None

    # delete_cache: gradio's copies of uploads and results are removed after an hour.
    with gr.Blocks(title="PEM segmentation", delete_cache=(600, 3600)) as app:
        gr.Markdown(
            "# PEM: Prototype-based Efficient MaskFormer\n"
            f"Checkpoint `{Path(model).name}`: {len(segmenter.id2label)} classes. Upload an image (up to "
            f"{max_pixels / 1e6:g} megapixels), choose the task."
        )
        with gr.Row():
            with gr.Column():
                # image_mode=None: the file reaches `Segmenter.read` as uploaded (gradio would clip 16-bit images).
                image = gr.Image(type="filepath", image_mode=None, label="Image", elem_id="pem-input")
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


__all__ = ["MAX_PIXELS", "MAX_UPLOAD", "Segmenter", "build_app"]
