"""The bad-input table: each row an input a hostile or careless user could give a public entry point, and what must
come of it — an error of a given type whose message names the problem (a fragment of it is checked), or the exact
correct result. Never a stack trace from deep inside torch, transformers or PIL, and never a silent wrong answer."""

import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file
from tiny_configs import TINY_DECODER, TINY_STDC

from transformers_pem import MeanIoU, PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor, predict
from transformers_pem.conversion.checkpoint_io import load_checkpoint
from transformers_pem.conversion.convert import convert
from transformers_pem.data.loaders import load_cityscapes, load_segmentation_dataset
from transformers_pem.data.synthetic import generate_ade20k, generate_cityscapes
from transformers_pem.deploy.onnx_export import calibration_images
from transformers_pem.deploy.onnx_export import load_checkpoint as load_export_checkpoint
from transformers_pem.evaluation.evaluate import evaluate_model
from transformers_pem.training.config import TrainingConfig
from transformers_pem.training.loop import train
from transformers_pem.utils.paths import check_output_dir
from transformers_pem.visualization.segmentation import draw_segmentation


@dataclass
class Context:
    tmp: Path
    model: PEMForUniversalSegmentation
    processor: PEMImageProcessor
    outputs: Any  # the model's outputs for `pixel_values`
    pixel_values: torch.Tensor  # (1, 3, 64, 96)
    image: np.ndarray  # (40, 60, 3) uint8
    data_root: Path  # a synthetic Cityscapes folder with a truncated training image
    ade20k_root: Path  # a synthetic ADE20K folder with a truncated training JPEG
    truncated_png: Path
    gray16_png: Path  # `image[..., 0] * 257` as a 16-bit grayscale PNG


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    config = PEMConfig.from_preset("pem-stdc1-cityscapes-panoptic", **TINY_STDC, **TINY_DECODER)
    model = PEMForUniversalSegmentation(config).eval()
    processor = PEMImageProcessor.from_preset(
        "pem-stdc1-cityscapes-panoptic", model_config=config, size={"shortest_edge": 32, "longest_edge": 64}
    )
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outputs = model(pixel_values)

    weights = {"a": torch.zeros(64, 64)}
    torch.save(weights, tmp / "good.pth")
    save_file(weights, tmp / "good.safetensors")
    with open(tmp / "good.pkl", "wb") as file:
        pickle.dump({"model": {"a": np.zeros((64, 64))}}, file)
    for suffix in ("pth", "safetensors", "pkl"):
        data = (tmp / f"good.{suffix}").read_bytes()
        (tmp / f"empty.{suffix}").write_bytes(b"")
        (tmp / f"truncated.{suffix}").write_bytes(data[: len(data) // 2])
        (tmp / f"random.{suffix}").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"model": weights, "extra": _Evil()}, tmp / "evil.pth")
    with open(tmp / "evil.pkl", "wb") as file:
        pickle.dump({"model": {"a": _Evil()}}, file)
    (tmp / "a_file").write_text("not a folder")
    (tmp / "used_run" / "checkpoint-5").mkdir(parents=True)
    (tmp / "used_run" / "checkpoint-5" / "trainer_state.json").write_text('{"step": 5, "epoch": 0}')

    data_root = generate_cityscapes(tmp / "cityscapes", num_train=2, num_val=1, size=(48, 96), seed=0)
    image_path = sorted((data_root / "leftImg8bit" / "train").glob("*/*.png"))[1]
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) * 2 // 3])
    ade20k_root = generate_ade20k(tmp / "ade20k", num_train=4, num_val=1, size=(64, 80), seed=0)
    jpeg = sorted((ade20k_root / "images" / "training").glob("*.jpg"))[1]
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])  # passes the load-time check, fails decoding
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    PIL.Image.fromarray(image).save(tmp / "image.png")
    (tmp / "truncated.png").write_bytes((tmp / "image.png").read_bytes()[:2000])
    PIL.Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(tmp / "gray16.png")
    return Context(
        tmp,
        model,
        processor,
        outputs,
        pixel_values,
        image,
        data_root,
        ade20k_root.parent,
        tmp / "truncated.png",
        tmp / "gray16.png",
    )


def _masks(context: Context, values=(0.0, 1.0), size=None) -> list[torch.Tensor]:
    height, width = size or context.pixel_values.shape[-2:]
    masks = torch.zeros(2, height, width)
    masks[0, : height // 2], masks[1, height // 2 :] = values[1], values[1]
    return [masks]


def _loss(context: Context, masks=None, labels=None, **kwargs):
    masks = _masks(context) if masks is None else masks
    labels = [torch.tensor([0, 13])] if labels is None else labels
    return context.model(context.pixel_values, mask_labels=masks, class_labels=labels, **kwargs)


def _process(context: Context, image, **kwargs) -> torch.Tensor:
    return context.processor(image, return_tensors="pt", **kwargs).pixel_values


def _same_as_the_image(result, context):
    """The row's image, built from the uint8 test image, must give the pixel_values of that image as 0-255 floats."""
    expected = _process(context, context.image.astype(np.float32))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def _same_as_uint8(result, context):
    """Integer images in 0-255 (and 16-bit ones, scaled) are processed as the uint8 image is."""
    torch.testing.assert_close(result, _process(context, context.image), rtol=0, atol=0)


def _channels_last_matches_channels_first(result, context):
    strip = np.random.default_rng(2).integers(0, 256, (3, 60, 3)).astype(np.uint8)
    expected = _process(context, strip.transpose(2, 0, 1).copy(), input_data_format="channels_first")
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def _grayscale_as_three_equal_channels(result, context):
    gray = context.image[..., 0]
    expected = _process(context, np.repeat(gray[..., None], 3, axis=-1))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def _tiny_input_gives_finite_masks(result, context):
    assert result.masks_queries_logits.shape[:2] == (1, TINY_DECODER["num_queries"])
    assert torch.isfinite(result.masks_queries_logits).all()


def _raises(error: type[Exception], fragment: str):
    return ("raises", error, fragment)


def _train(context: Context, output_dir, **kwargs):
    return train(
        TrainingConfig(
            output_dir=output_dir,
            data_root=context.data_root,
            preset="pem-stdc1-cityscapes-panoptic",
            task="panoptic",
            max_steps=1,
            **kwargs,
        )
    )


def _config(**kwargs) -> TrainingConfig:
    return TrainingConfig(output_dir="unused", data_root="unused", preset="pem-stdc1-cityscapes-panoptic", **kwargs)


def _warnings(call: Callable[[], Any]) -> list[str]:
    """The messages of the warnings `call()` emits."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(warning.message) for warning in caught]


def _instance_target_sizes(context: Context, target_sizes):
    return context.processor.post_process_instance_segmentation(context.outputs, target_sizes=target_sizes)


def _decoded_as_the_saved_16bit(result, context):
    """A 16-bit grayscale PNG given by path: scaled to 8 bit (not clipped to white), as a uint16 array would be."""
    values = context.image[..., 0].astype(np.uint16) * 257
    torch.testing.assert_close(result, _process(context, values), rtol=0, atol=0)


def _segment(context: Context, image) -> list[tuple[str, np.ndarray]]:
    """PEMImageSegmentationPipeline's panoptic segments of `image`: (label, mask) pairs."""
    from transformers import pipeline

    from transformers_pem import PEMImageSegmentationPipeline

    segmenter = pipeline(
        "image-segmentation",
        model=context.model,
        image_processor=context.processor,
        pipeline_class=PEMImageSegmentationPipeline,
    )
    return [(a["label"], np.asarray(a["mask"])) for a in segmenter(image, subtask="panoptic", threshold=0.0)]


def _segments_of_the_saved_16bit(result, context):
    """The 16-bit PNG's segments are those of its 8-bit image (value / 257), not of Pillow's clipped white one."""
    expected = _segment(context, PIL.Image.fromarray(np.dstack([context.image[..., 0]] * 3)))
    assert expected and [label for label, _ in result] == [label for label, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(result, expected))


STRIP = np.random.default_rng(2).integers(0, 256, (3, 60, 3)).astype(np.uint8)
P = _process

# (id, entry point, call(context), expected: a check(result, context) or _raises(type, message fragment))
ROWS: list[tuple[str, str, Callable[[Context], Any], Any]] = [
    # --- image processor: images
    ("nan-pixels", "processor", lambda c: P(c, np.full((40, 60, 3), np.nan, np.float32)), _raises(ValueError, "NaN")),
    ("inf-pixels", "processor", lambda c: P(c, np.full((40, 60, 3), np.inf, np.float32)), _raises(ValueError, "NaN")),
    ("three-row-hwc", "processor", lambda c: P(c, STRIP), _raises(ValueError, "input_data_format")),
    ("one-by-n-by-4", "processor", lambda c: P(c, np.zeros((1, 50, 4), np.uint8)), _raises(ValueError, "channels")),
    (
        "three-row-hwc-declared",
        "processor",
        lambda c: P(c, STRIP, input_data_format="channels_last"),
        _channels_last_matches_channels_first,
    ),
    ("float-0-1", "processor", lambda c: P(c, c.image.astype(np.float32) / 255), _same_as_the_image),
    (
        "float-0-1-tensor",
        "processor",
        lambda c: P(c, torch.from_numpy(c.image).permute(2, 0, 1).float() / 255),
        _same_as_the_image,
    ),
    ("float-0-255", "processor", lambda c: P(c, c.image.astype(np.float64)), _same_as_the_image),
    ("uint16", "processor", lambda c: P(c, c.image.astype(np.uint16) * 257), _same_as_uint8),
    ("int64-in-range", "processor", lambda c: P(c, c.image.astype(np.int64)), _same_as_uint8),
    ("int32-above-255", "processor", lambda c: P(c, c.image.astype(np.int32) * 4), _raises(ValueError, "0-255")),
    ("int32-negative", "processor", lambda c: P(c, c.image.astype(np.int32) - 1), _raises(ValueError, "0-255")),
    ("bool-image", "processor", lambda c: P(c, c.image > 127), _raises(ValueError, "dtype bool")),
    ("complex-image", "processor", lambda c: P(c, c.image.astype(np.complex64)), _raises(ValueError, "complex")),
    ("empty-image", "processor", lambda c: P(c, np.zeros((0, 60, 3), np.uint8)), _raises(ValueError, "non-empty")),
    ("five-channels", "processor", lambda c: P(c, np.zeros((40, 60, 5), np.uint8)), _raises(ValueError, "channels")),
    ("one-d-array", "processor", lambda c: P(c, np.zeros(60, np.uint8)), _raises(ValueError, "flat list of images")),
    ("pil-mode-I", "processor", lambda c: P(c, PIL.Image.new("I", (60, 40))), _raises(ValueError, "32-bit")),
    ("pil-mode-F", "processor", lambda c: P(c, PIL.Image.new("F", (60, 40))), _raises(ValueError, "32-bit")),
    ("grayscale-2d", "processor", lambda c: P(c, c.image[..., 0]), _grayscale_as_three_equal_channels),
    # --- image processor: targets and sizes
    (
        "map-size-mismatch",
        "processor",
        lambda c: c.processor(c.image, segmentation_maps=np.zeros((60, 40), np.uint8)),
        _raises(ValueError, "Segmentation map 0 has size"),
    ),
    (
        "instance-dicts-count",
        "processor",
        lambda c: c.processor(
            [c.image, c.image],
            segmentation_maps=[np.zeros((40, 60), np.uint8)] * 2,
            instance_id_to_semantic_id=[{0: 0}],
        ),
        _raises(ValueError, "instance_id_to_semantic_id"),
    ),
    (
        "mixed-sizes-unpadded",
        "processor",
        lambda c: c.processor([c.image, c.image[:, :30]], do_pad=False),
        _raises(ValueError, "do_pad=True"),
    ),
    (
        "pad-size-too-small",
        "processor",
        lambda c: c.processor(c.image, pad_size={"height": 8, "width": 8}),
        _raises(ValueError, "pad_size"),
    ),
    # --- model
    (
        "uint8-pixel-values",
        "model",
        lambda c: c.model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
        _raises(ValueError, "float tensor"),
    ),
    ("float64-pixel-values", "model", lambda c: c.model(c.pixel_values.double()), _raises(ValueError, "model.dtype")),
    ("three-d-pixel-values", "model", lambda c: c.model(c.pixel_values[0]), _raises(ValueError, "4-D")),
    ("empty-batch", "model", lambda c: c.model(c.pixel_values[:0]), _raises(ValueError, "non-empty")),
    ("four-channels", "model", lambda c: c.model(torch.zeros(1, 4, 32, 32)), _raises(ValueError, "channels")),
    ("numpy-pixel-values", "model", lambda c: c.model(c.pixel_values.numpy()), _raises(ValueError, "4-D tensor")),
    ("tiny-input", "model", lambda c: c.model(torch.zeros(1, 3, 8, 8)), _tiny_input_gives_finite_masks),
    # --- model with targets (the loss)
    (
        "masks-without-labels",
        "loss",
        lambda c: c.model(c.pixel_values, mask_labels=_masks(c)),
        _raises(ValueError, "Pass both"),
    ),
    ("masks-0-255", "loss", lambda c: _loss(c, masks=_masks(c, (0, 255))), _raises(ValueError, "masks > 0")),
    ("masks-transposed", "loss", lambda c: _loss(c, masks=_masks(c, size=(96, 64))), _raises(ValueError, "has size")),
    (
        "masks-quarter-size",
        "loss",
        lambda c: _loss(c, masks=_masks(c, size=(16, 24))),
        _raises(ValueError, "has size"),
    ),
    (
        "label-out-of-range",
        "loss",
        lambda c: _loss(c, labels=[torch.tensor([0, 19])]),
        _raises(ValueError, "class_labels must be in [0, 18]"),
    ),
    ("label-negative", "loss", lambda c: _loss(c, labels=[torch.tensor([-1, 3])]), _raises(ValueError, "[0, 18]")),
    ("label-float", "loss", lambda c: _loss(c, labels=[torch.tensor([0.0, 1.0])]), _raises(ValueError, "integer")),
    ("mask-label-count", "loss", lambda c: _loss(c, labels=[torch.tensor([0])]), _raises(ValueError, "one mask per")),
    (
        "targets-per-batch",
        "loss",
        lambda c: _loss(c, masks=_masks(c) * 2, labels=[torch.tensor([0, 1])] * 2),
        _raises(ValueError, "one entry per image"),
    ),
    ("mask-not-tensor", "loss", lambda c: _loss(c, masks=[np.zeros((2, 64, 96))]), _raises(TypeError, "tensors")),
    # --- post-processing
    (
        "panoptic-threshold-above-1",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, threshold=1.5),
        _raises(ValueError, "threshold must be in [0, 1]"),
    ),
    (
        "panoptic-threshold-negative",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, threshold=-0.1),
        _raises(ValueError, "threshold must be in [0, 1]"),
    ),
    (
        "panoptic-mask-threshold-1",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, mask_threshold=1.0),
        _raises(ValueError, "mask_threshold must be in [0, 1)"),
    ),
    (
        "panoptic-overlap-2",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, overlap_mask_area_threshold=2),
        _raises(ValueError, "overlap_mask_area_threshold"),
    ),
    (
        "panoptic-fuse-unknown-id",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, label_ids_to_fuse={99}),
        _raises(ValueError, "label_ids_to_fuse"),
    ),
    (
        "instance-threshold-2",
        "post-processing",
        lambda c: c.processor.post_process_instance_segmentation(c.outputs, threshold=2.0),
        _raises(ValueError, "threshold must be in [0, 1]"),
    ),
    (
        "instance-mask-threshold-1",
        "post-processing",
        lambda c: c.processor.post_process_instance_segmentation(c.outputs, mask_threshold=1.0),
        _raises(ValueError, "mask_threshold"),
    ),
    (
        "instance-rle-and-maps",
        "post-processing",
        lambda c: c.processor.post_process_instance_segmentation(
            c.outputs, return_coco_annotation=True, return_binary_maps=True
        ),
        _raises(ValueError, "cannot both be True"),
    ),
    (
        "target-sizes-count",
        "post-processing",
        lambda c: c.processor.post_process_semantic_segmentation(c.outputs, target_sizes=[(10, 10), (10, 10)]),
        _raises(ValueError, "target sizes for a batch of 1"),
    ),
    (
        "target-size-zero",
        "post-processing",
        lambda c: c.processor.post_process_semantic_segmentation(c.outputs, target_sizes=[(0, 10)]),
        _raises(ValueError, "positive"),
    ),
    (
        "pixel-mask-shape",
        "post-processing",
        lambda c: c.processor.post_process_semantic_segmentation(c.outputs, pixel_mask=torch.ones(64, 96)),
        _raises(ValueError, "pixel_mask must have shape"),
    ),
    (
        "pixel-mask-empty",
        "post-processing",
        lambda c: c.processor.post_process_panoptic_segmentation(c.outputs, pixel_mask=torch.zeros(1, 64, 96)),
        _raises(ValueError, "no valid pixel"),
    ),
    # --- converter
    *[
        (
            f"checkpoint-{kind}-{suffix}",
            "converter",
            lambda c, kind=kind, suffix=suffix: load_checkpoint(c.tmp / f"{kind}.{suffix}"),
            _raises(ValueError, fragment),
        )
        for suffix in ("pth", "safetensors", "pkl")
        for kind, fragment in (("empty", "is empty"), ("truncated", "not a readable"), ("random", "not a readable"))
    ],
    (
        "checkpoint-code-pth",
        "converter",
        lambda c: load_checkpoint(c.tmp / "evil.pth"),
        _raises(ValueError, "Refusing to load"),
    ),
    (
        "checkpoint-code-pkl",
        "converter",
        lambda c: load_checkpoint(c.tmp / "evil.pkl"),
        _raises(ValueError, "forbidden global"),
    ),
    (
        "checkpoint-missing",
        "converter",
        lambda c: load_checkpoint(c.tmp / "missing.pth"),
        _raises(ValueError, "does not exist"),
    ),
    (
        "checkpoint-good-pkl",
        "converter",
        lambda c: load_checkpoint(c.tmp / "good.pkl"),
        lambda result, c: torch.testing.assert_close(result["a"], torch.zeros(64, 64, dtype=torch.float64)),
    ),
    (
        "convert-output-is-file",
        "converter",
        lambda c: convert("pem-stdc1-cityscapes-semantic", c.tmp / "a_file", backbone_weights=c.tmp / "missing.tar"),
        _raises(ValueError, "is a file, not a folder"),
    ),
    (
        "output-under-a-file",
        "converter",
        lambda c: check_output_dir(c.tmp / "a_file" / "out"),
        _raises(ValueError, "cannot be created"),
    ),
    # --- training
    (
        "train-output-is-file",
        "training",
        lambda c: _train(c, c.tmp / "a_file"),
        _raises(ValueError, "is a file, not a folder"),
    ),
    (
        "train-reused-run-dir",
        "training",
        lambda c: _train(c, c.tmp / "used_run"),
        _raises(ValueError, "already holds a run"),
    ),
    (
        "train-resume-not-a-checkpoint",
        "training",
        lambda c: _train(c, c.tmp / "new_run", resume=str(c.tmp)),
        _raises(ValueError, "no such checkpoint"),
    ),
    (
        "train-truncated-jpeg",
        "training",
        lambda c: train(
            TrainingConfig(
                output_dir=c.tmp / "ade20k_run",
                data_root=c.ade20k_root,
                dataset="ade20k",
                preset="pem-stdc1-ade20k-semantic",
                task="semantic",
                max_steps=2,
                batch_size=2,
                scale=0.125,
                eval_every=0,
                config_overrides=TINY_DECODER,
            )
        ),
        _raises(ValueError, "ADE_train_00000002.jpg"),
    ),
    (
        "dataset-truncated-image",
        "datasets",
        lambda c: load_cityscapes(c.data_root, split="train"),
        _raises(ValueError, "_leftImg8bit.png"),
    ),
    ("dataset-missing-root", "datasets", lambda c: load_cityscapes(c.tmp / "nowhere"), _raises(ValueError, "nowhere")),
    # --- image processor: paths (one decoder: image_loading_pem)
    ("path-missing", "processor", lambda c: P(c, str(c.tmp / "missing.png")), _raises(ValueError, "no such file")),
    ("path-folder", "processor", lambda c: P(c, c.tmp), _raises(ValueError, "it is a folder")),
    ("path-not-image", "processor", lambda c: P(c, str(c.tmp / "a_file")), _raises(ValueError, "not an image")),
    (
        "path-truncated-png",
        "processor",
        lambda c: P(c, str(c.truncated_png)),
        _raises(ValueError, "truncated or corrupt"),
    ),
    ("path-16bit-png", "processor", lambda c: P(c, str(c.gray16_png)), _decoded_as_the_saved_16bit),
    # --- config (PEMConfig and its presets)
    (
        "preset-typo-field",
        "config",
        lambda c: PEMConfig.from_preset("pem-stdc1-cityscapes-panoptic", num_querys=50),
        _raises(ValueError, "did you mean 'num_queries'"),
    ),
    (
        "id2label-gaps",
        "config",
        lambda c: PEMConfig(id2label={0: "a", 2: "c"}),
        _raises(ValueError, "missing [1]"),
    ),
    (
        "label2id-only",
        "config",
        lambda c: PEMConfig(label2id={"a": 0, "b": 1, "c": 2}),
        lambda result, c: result.id2label == {0: "a", 1: "b", 2: "c"} or pytest.fail(f"{result.id2label}"),
    ),
    # --- training options (TrainingConfig, the fields of `pem train`)
    ("train-max-steps-zero", "training", lambda c: _config(max_steps=0), _raises(ValueError, "max_steps must be")),
    ("train-max-steps-negative", "training", lambda c: _config(max_steps=-5), _raises(ValueError, "at least 1")),
    (
        "train-warmup-negative",
        "training",
        lambda c: _config(warmup_steps=-10),
        _raises(ValueError, "warmup_steps must be at least 0"),
    ),
    (
        "train-keep-checkpoints-negative",
        "training",
        lambda c: _config(keep_checkpoints=-1),
        _raises(ValueError, "keep_checkpoints must be at least 1"),
    ),
    (
        "train-precise-bn-negative",
        "training",
        lambda c: _config(precise_bn_batches=-3),
        _raises(ValueError, "precise_bn_batches must be at least 0"),
    ),
    (
        "train-accumulation-zero",
        "training",
        lambda c: _config(gradient_accumulation_steps=0),
        _raises(ValueError, "gradient_accumulation_steps"),
    ),
    ("train-eval-every-negative", "training", lambda c: _config(eval_every=-1), _raises(ValueError, "eval_every")),
    ("train-lr-nan", "training", lambda c: _config(learning_rate=float("nan")), _raises(ValueError, "learning_rate")),
    ("train-lr-zero", "training", lambda c: _config(learning_rate=0.0), _raises(ValueError, "more than 0")),
    ("train-steps-float", "training", lambda c: _config(max_steps=2.5), _raises(ValueError, "a whole number")),
    (
        "train-overrides-typo",
        "training",
        lambda c: _config(config_overrides={"num_querys": 50}),
        _raises(ValueError, "did you mean 'num_queries'"),
    ),
    (
        "train-overrides-with-saved-model",
        "training",
        lambda c: _config(model_name_or_path="some/model", config_overrides={"num_queries": 50}),
        _raises(ValueError, "keeps its own config"),
    ),
    (
        "train-id2label-word-keys",
        "training",
        lambda c: _config(id2label={"a": "road"}),
        _raises(ValueError, "id2label keys are class indices"),
    ),
    (
        "train-id2label-list",
        "training",
        lambda c: _config(id2label=["road", "car"]),
        _raises(ValueError, "id2label maps class indices to names"),
    ),
    (
        "train-thing-ids-without-labels",
        "training",
        lambda c: _config(thing_ids=[11]),
        _raises(ValueError, "pass id2label with it"),
    ),
    (
        "train-column-mapping-not-hub",
        "training",
        lambda c: _config(column_mapping={"img": "image"}),
        _raises(ValueError, "drop column_mapping or use dataset='hub'"),
    ),
    (
        "train-warmup-longer-than-training",
        "training",
        lambda c: _warnings(lambda: _config(warmup_steps=50, max_steps=10)),
        lambda result, c: (
            any("warmup_steps=50 is not shorter than max_steps=10" in m for m in result) or pytest.fail(f"{result}")
        ),
    ),
    (
        "train-model-path-missing",
        "training",
        lambda c: _config(model_name_or_path=str(c.tmp / "no_such_model")),
        _raises(ValueError, "no_such_model' does not exist"),
    ),
    # --- loss targets
    (
        "loss-nan-masks",
        "loss",
        lambda c: _loss(c, masks=_masks(c, values=(0.0, float("nan")))),
        _raises(ValueError, "mask_labels[0] has NaN"),
    ),
    # --- post-processing target sizes
    (
        "target-sizes-one-pair",
        "post-processing",
        lambda c: _instance_target_sizes(c, (40, 60)),
        _raises(ValueError, "not (height, width)"),
    ),
    (
        "target-sizes-triple",
        "post-processing",
        lambda c: _instance_target_sizes(c, [(40, 60, 3)]),
        _raises(ValueError, "the entry"),
    ),
    (
        "target-sizes-0d-tensors",
        "post-processing",
        lambda c: c.processor.post_process_semantic_segmentation(
            c.outputs, target_sizes=[(torch.tensor(40), torch.tensor(60))]
        ),
        lambda result, c: tuple(result[0].shape) == (40, 60) or pytest.fail(f"{result[0].shape}"),
    ),
    (
        "target-sizes-fractional",
        "post-processing",
        lambda c: _instance_target_sizes(c, [(40.5, 60)]),
        _raises(ValueError, "whole numbers"),
    ),
    (
        "target-sizes-string",
        "post-processing",
        lambda c: _instance_target_sizes(c, "40x60"),
        _raises(ValueError, "list of"),
    ),
    # --- inference, evaluation, drawing
    ("pipeline-16bit-path", "inference", lambda c: _segment(c, str(c.gray16_png)), _segments_of_the_saved_16bit),
    (
        "pipeline-missing-path",
        "inference",
        lambda c: _segment(c, str(c.tmp / "missing.png")),
        _raises(ValueError, "missing.png: no such file"),
    ),
    (
        "pipeline-truncated-png",
        "inference",
        lambda c: _segment(c, c.truncated_png),
        _raises(ValueError, "truncated or corrupt"),
    ),
    (
        "predict-one-path",
        "inference",
        lambda c: predict(c.model, c.processor, str(c.gray16_png)),
        _raises(ValueError, "pass [image]"),
    ),
    (
        "predict-max-size-without-scales",
        "inference",
        lambda c: predict(c.model, c.processor, [c.image], max_size=64),
        _raises(ValueError, "max_size caps the test-time scales"),
    ),
    (
        "predict-missing-path",
        "inference",
        lambda c: predict(c.model, c.processor, [c.tmp / "missing.png"]),
        _raises(ValueError, "no such file"),
    ),
    (
        "evaluate-a-folder",
        "evaluation",
        lambda c: evaluate_model(c.model, c.processor, str(c.data_root)),
        _raises(ValueError, "load it first"),
    ),
    (
        "evaluate-export-under-a-file",
        "evaluation",
        lambda c: evaluate_model(
            c.model, c.processor, [{"image": c.image, "semantic": c.image[..., 0]}], export_dir=c.tmp / "a_file" / "x"
        ),
        _raises(ValueError, "cannot be created"),
    ),
    (
        "draw-scores-not-labels",
        "visualization",
        lambda c: draw_segmentation(None, np.random.default_rng(0).random((4, 4))),
        _raises(ValueError, "integer class or segment ids"),
    ),
    (
        "draw-result-dict",
        "visualization",
        lambda c: draw_segmentation(None, {"segmentation": np.zeros((4, 4), int)}),
        _raises(ValueError, "pass result['segmentation']"),
    ),
    (
        "draw-alpha-2",
        "visualization",
        lambda c: draw_segmentation(None, np.zeros((4, 4), int), alpha=2),
        _raises(ValueError, "alpha"),
    ),
    (
        "draw-missing-image-path",
        "visualization",
        lambda c: draw_segmentation(c.tmp / "missing.png", np.zeros((4, 4), int)),
        _raises(ValueError, "no such file"),
    ),
    # --- metrics
    (
        "miou-labels-out-of-range",
        "metrics",
        lambda c: MeanIoU().compute(
            predictions=[np.zeros((4, 4), int)], references=[np.full((4, 4), 40)], num_labels=19, ignore_index=255
        ),
        _raises(ValueError, "No reference pixel holds a class"),
    ),
    (
        "miou-all-ignored-is-nan",
        "metrics",
        lambda c: MeanIoU().compute(
            predictions=[np.zeros((4, 4), int)], references=[np.full((4, 4), 255)], num_labels=19, ignore_index=255
        ),
        lambda result, c: np.isnan(result["mean_iou"]) or pytest.fail("all-ignored references must give NaN"),
    ),
    (
        "miou-float-predictions",
        "metrics",
        lambda c: MeanIoU().compute(
            predictions=[np.full((4, 4), 0.5)], references=[np.zeros((4, 4), int)], num_labels=19, ignore_index=255
        ),
        _raises(ValueError, "integer"),
    ),
    (
        "dataset-path-missing",
        "datasets",
        lambda c: load_segmentation_dataset(str(c.tmp / "no_such_dataset"), split="train"),
        _raises(ValueError, "no_such_dataset' does not exist"),
    ),
    # --- export
    (
        "export-checkpoint-missing",
        "export",
        lambda c: load_export_checkpoint(c.tmp / "no_such_checkpoint"),
        _raises(ValueError, "no_such_checkpoint' does not exist"),
    ),
    (
        "export-calibration-missing",
        "export",
        lambda c: calibration_images(c.tmp / "no_such_images", 4),
        _raises(ValueError, "no_such_images' does not exist"),
    ),
    (
        "miou-compute-before-add",
        "metrics",
        lambda c: MeanIoU().compute(num_labels=19, ignore_index=255),
        _raises(ValueError, "before any example"),
    ),
]


def test_the_table_covers_every_entry_point():
    assert len(ROWS) >= 60
    assert len({row[0] for row in ROWS}) == len(ROWS)
    entry_points = {row[1] for row in ROWS}
    assert entry_points == {
        "processor",
        "model",
        "loss",
        "post-processing",
        "converter",
        "training",
        "datasets",
        "metrics",
        "config",
        "inference",
        "evaluation",
        "visualization",
        "export",
    }


@pytest.mark.parametrize("name, entry_point, call, expected", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(context, name, entry_point, call, expected):
    if isinstance(expected, tuple):
        _, error, fragment = expected
        with pytest.raises(error) as raised:
            call(context)
        assert fragment in str(raised.value), f"{name}: the message does not say {fragment!r}: {raised.value}"
    else:
        with torch.no_grad():
            result = call(context)
        expected(result, context)
