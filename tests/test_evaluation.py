"""Evaluation loop, TTA, sliding windows, batching, export formats and the command line (`evaluation.evaluate`).

Predictions are checked against independent computations written here from the official inference (model forward
+ `sum_q softmax(class_q)[:-1] * sigmoid(mask_q)`, bilinear resizes); metrics against ground-truth "oracle" and
constant predictions, whose scores follow from the annotation files, and against the official scorers
(cityscapesscripts, pycocotools) run on the exported files.
"""

import contextlib
import copy
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cityscapes_panoptic
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cityscapes_pixel
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tiny_configs import TINY_DECODER
from torch import nn
from torch.nn import functional as F

from transformers_pem import PEMConfig, PEMForUniversalSegmentation, STDCConfig
from transformers_pem.cli.evaluate import main
from transformers_pem.data.loaders import load_ade20k, load_cityscapes, load_evaluation_dataset, segment_ids_from_image
from transformers_pem.evaluation.evaluate import evaluate_model, format_results_table
from transformers_pem.image_processing_pem import PEMImageProcessor
from transformers_pem.inference.predictor import predict
from transformers_pem.labels_pem import ADE20K_LABELS, CITYSCAPES_LABELS
from transformers_pem.presets_pem import official_crop_size, official_tta_settings

ROOT = Path(__file__).resolve().parents[1]
CITYSCAPES_NAMES = {index: label[0] for index, label in enumerate(CITYSCAPES_LABELS)}
CITYSCAPES_THINGS = [index for index, label in enumerate(CITYSCAPES_LABELS) if label[2]]
ADE20K_THINGS = [index for index, label in enumerate(ADE20K_LABELS) if label[2]]
CITYSCAPES_SIZE = (64, 128)  # synthetic images; the processors below keep this size (no resize)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # The tiny models run much faster on one thread than on shared, oversubscribed cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model() -> PEMForUniversalSegmentation:
    torch.manual_seed(0)
    config = PEMConfig(
        backbone_config=STDCConfig(base_channels=16, layers=[1, 1, 1]),
        **TINY_DECODER,
        decoder_layers=2,
        id2label=CITYSCAPES_NAMES,
        thing_ids=CITYSCAPES_THINGS,
    )
    model = PEMForUniversalSegmentation(config).eval()
    with torch.no_grad():  # confident classes and spatially varied masks instead of the near-uniform initialisation
        model.class_predictor.weight.normal_(0, 10)
        model.model.transformer_module.mask_embedder.layers[2].weight.mul_(3e5)
    return model


def ade20k_model(tiny_model) -> PEMForUniversalSegmentation:
    model = copy.deepcopy(tiny_model)
    model.class_predictor = nn.Linear(32, len(ADE20K_LABELS) + 1)
    with torch.no_grad():
        model.class_predictor.weight.normal_(0, 10)
    model.config.id2label = {index: label[0] for index, label in enumerate(ADE20K_LABELS)}
    return model


def cityscapes_processor(task: str = "semantic", height: int = CITYSCAPES_SIZE[0], **kwargs) -> PEMImageProcessor:
    return PEMImageProcessor.from_preset(
        f"pem-r50-cityscapes-{task}", size={"shortest_edge": height, "longest_edge": 4 * height}, **kwargs
    )


@pytest.fixture(scope="module")
def cityscapes_root(synthetic_cityscapes) -> Path:
    return synthetic_cityscapes(num_train=0, num_val=3, size=CITYSCAPES_SIZE)


@pytest.fixture(scope="module")
def ade20k_root(synthetic_ade20k) -> Path:
    # widths vary around 64 (48..80), heights are 48: mixed padded sizes (64 or 96 wide) and valid sizes
    return synthetic_ade20k(num_train=0, num_val=4, size=(48, 64), seed=3)


def rgb_image(seed: int, height: int, width: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference of the official semantic inference
# ---------------------------------------------------------------------------------------------------------------------


def processed(processor, image, **kwargs) -> torch.Tensor:
    """The processor's unpadded `(1, 3, height, width)` pixel values of one image."""
    return processor(images=[image], do_pad=False, return_tensors="pt", **kwargs)["pixel_values"]


def official_semantic_scores(model, pixel_values: torch.Tensor, output_size) -> torch.Tensor:
    """Official semantic inference of one unpadded image: pad to 32, scores at the padded size, crop, resize."""
    height, width = pixel_values.shape[-2:]
    padded_height, padded_width = -(-height // 32) * 32, -(-width // 32) * 32
    with torch.no_grad():
        outputs = model(pixel_values=F.pad(pixel_values, (0, padded_width - width, 0, padded_height - height)))
    masks = F.interpolate(
        outputs.masks_queries_logits, size=(padded_height, padded_width), mode="bilinear", align_corners=False
    ).sigmoid()
    probabilities = outputs.class_queries_logits.softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", probabilities, masks)[:, :, :height, :width]
    return F.interpolate(scores, size=tuple(output_size), mode="bilinear", align_corners=False)[0]


def assert_same_prediction(scores: torch.Tensor, expected_scores: torch.Tensor, segmentation: torch.Tensor):
    """Scores equal up to float rounding; class maps equal wherever the best two classes are not tied."""
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
    top_two = expected_scores.topk(2, dim=0).values
    decided = (top_two[0] - top_two[1]) > 1e-4
    assert decided.float().mean() > 0.99
    assert torch.equal(segmentation[decided], expected_scores.argmax(0)[decided])


# ---------------------------------------------------------------------------------------------------------------------
# Test-time augmentation, sliding windows, batching
# ---------------------------------------------------------------------------------------------------------------------


def test_official_settings():
    assert official_tta_settings("cityscapes", "semantic") == {
        "scales": [512, 768, 1024, 1280, 1536, 1792],
        "max_size": 4096,
        "flip": True,
    }
    assert official_tta_settings("ade20k", "semantic")["scales"] == [256, 384, 512, 640, 768, 896]
    assert official_tta_settings("ade20k", "semantic")["max_size"] == 3584
    assert official_tta_settings("ade20k", "panoptic")["scales"] == [320, 480, 640, 800, 960, 1120]
    assert official_tta_settings("ade20k", "instance")["max_size"] == 4480
    assert official_crop_size("cityscapes", "panoptic") == (512, 1024)
    assert official_crop_size("ade20k", "panoptic") == (640, 640)
    with pytest.raises(ValueError, match="Unknown dataset .coco.: official settings exist for"):
        official_tta_settings("coco", "semantic")


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_tta_with_one_scale_and_no_flip_equals_single_scale(tiny_model, task):
    processor = cityscapes_processor(task, height=48)
    images = [rgb_image(0, 64, 128), rgb_image(1, 72, 100)]
    single = predict(tiny_model, processor, images, task=task, return_scores=True)
    tta = predict(tiny_model, processor, images, task=task, scales=[48], return_scores=True)
    for single_prediction, tta_prediction in zip(single, tta):
        assert torch.equal(single_prediction["semantic_scores"], tta_prediction["semantic_scores"])
        assert torch.equal(single_prediction["semantic"], tta_prediction["semantic"])
        if task == "panoptic":
            assert torch.equal(
                single_prediction["panoptic"]["segmentation"], tta_prediction["panoptic"]["segmentation"]
            )
            assert single_prediction["panoptic"]["segments_info"] == tta_prediction["panoptic"]["segments_info"]


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_without_the_semantic_output_the_task_output_is_unchanged(tiny_model, task):
    """`return_semantic=False` skips the semantic work (and TTA, which applies to it only), not the task's output."""
    processor = cityscapes_processor("panoptic", height=48)  # instance runs the panoptic models and settings
    images = [rgb_image(0, 64, 128), rgb_image(1, 72, 100)]
    full = predict(tiny_model, processor, images, task=task, batch_size=2)
    lean = predict(tiny_model, processor, images, task=task, batch_size=2, scales=[40, 56], return_semantic=False)
    for full_prediction, lean_prediction in zip(full, lean):
        assert set(lean_prediction) == {task}
        assert torch.equal(full_prediction[task]["segmentation"], lean_prediction[task]["segmentation"])
        assert full_prediction[task]["segments_info"] == lean_prediction[task]["segments_info"]
    assert set(predict(tiny_model, processor, images[:1], task="semantic", return_semantic=False)[0]) == {"semantic"}
    with pytest.raises(ValueError, match="return_scores needs the semantic prediction"):
        predict(tiny_model, processor, images, task=task, return_scores=True, return_semantic=False)


def test_tta_averages_the_official_scores_over_scales_and_flips(tiny_model):
    processor = cityscapes_processor("semantic")
    image = rgb_image(2, 60, 90)
    prediction = predict(tiny_model, processor, [image], scales=[40, 64], max_size=200, flip=True, return_scores=True)
    expected = []
    for scale in (40, 64):
        pixel_values = processed(processor, image, size={"shortest_edge": scale, "longest_edge": 200})
        expected.append(official_semantic_scores(tiny_model, pixel_values, (60, 90)))
        expected.append(official_semantic_scores(tiny_model, pixel_values.flip(-1), (60, 90)).flip(-1))
    expected = torch.stack(expected).mean(0)
    assert_same_prediction(prediction[0]["semantic_scores"], expected, prediction[0]["semantic"])


@pytest.mark.parametrize("task", ["semantic", "panoptic"])
def test_sliding_window_over_an_image_no_larger_than_the_window_equals_whole_image(tiny_model, task):
    processor = cityscapes_processor(task)
    images = [rgb_image(3, 64, 128), rgb_image(4, 64, 96)]
    whole = predict(tiny_model, processor, images, task=task, return_scores=True)
    for window in [(64, 128), (100, 200)]:
        windowed = predict(tiny_model, processor, images, task=task, sliding_window=window, return_scores=True)
        for whole_prediction, windowed_prediction in zip(whole, windowed):
            assert torch.equal(whole_prediction["semantic_scores"], windowed_prediction["semantic_scores"])


def test_sliding_window_averages_overlapping_windows(tiny_model):
    processor = cityscapes_processor("semantic")
    image = rgb_image(5, 80, 160)  # processed to 64 x 128, predicted at 80 x 160
    prediction = predict(
        tiny_model,
        processor,
        [image],
        sliding_window=(64, 64),
        sliding_window_stride=(64, 32),
        batch_size=2,
        return_scores=True,
    )
    pixel_values = processed(processor, image)
    assert pixel_values.shape[-2:] == (64, 128)
    total, counts = torch.zeros(19, 64, 128), torch.zeros(64, 128)
    for left in (0, 32, 64):  # stride 32, the last window ending at the border
        crop = pixel_values[..., left : left + 64]
        total[:, :, left : left + 64] += official_semantic_scores(tiny_model, crop, (64, 64))
        counts[:, left : left + 64] += 1
    assert counts.min() == 1 and counts.max() == 2
    expected = F.interpolate((total / counts)[None], size=(80, 160), mode="bilinear", align_corners=False)[0]
    assert_same_prediction(prediction[0]["semantic_scores"], expected, prediction[0]["semantic"])


def test_batch_of_mixed_sizes_equals_batch_size_one(tiny_model):
    processor = cityscapes_processor("panoptic", height=40)
    # padded sizes 64x64, 64x64, 64x96 (two images share a forward pass but differ in valid size) and 96x64
    images = [rgb_image(6, 40, 50), rgb_image(7, 40, 60), rgb_image(8, 40, 90), rgb_image(9, 70, 40)]
    batched = predict(tiny_model, processor, images, task="instance", batch_size=4, return_scores=True)
    for image, batched_prediction in zip(images, batched):
        single = predict(tiny_model, processor, [image], task="instance", return_scores=True)[0]
        assert batched_prediction["semantic"].shape == (image.height, image.width)
        assert_same_prediction(batched_prediction["semantic_scores"], single["semantic_scores"], single["semantic"])
        batched_scores = [segment["score"] for segment in batched_prediction["instance"]["segments_info"]]
        single_scores = [segment["score"] for segment in single["instance"]["segments_info"]]
        np.testing.assert_allclose(batched_scores, single_scores, rtol=1e-5, atol=1e-6)
        assert batched_prediction["instance"]["segmentation"].shape[1:] == (image.height, image.width)
        # each image against the official formula too
        expected = official_semantic_scores(tiny_model, processed(processor, image), (image.height, image.width))
        assert_same_prediction(batched_prediction["semantic_scores"], expected, batched_prediction["semantic"])


def test_evaluate_model_batch_size_does_not_change_the_metrics(tiny_model, ade20k_root):
    dataset = load_ade20k(ade20k_root, split="val", task="semantic")
    assert len({example["image"].size for example in dataset}) > 1  # mixed sizes
    model = ade20k_model(tiny_model)
    processor = PEMImageProcessor.from_preset(
        "pem-r50-ade20k-semantic", size={"shortest_edge": 48, "longest_edge": 200}
    )
    one = evaluate_model(model, processor, dataset, batch_size=1, progress=False)
    model.train()  # as during training: evaluated in eval mode, then put back in training mode
    four = evaluate_model(model, processor, dataset, batch_size=4, progress=False)
    assert model.training
    assert one.keys() == four.keys()
    for key in one:
        assert one[key] == pytest.approx(four[key], abs=0.05, nan_ok=True), key


# ---------------------------------------------------------------------------------------------------------------------
# Metrics: oracle and constant predictions
# ---------------------------------------------------------------------------------------------------------------------


class GroundTruthModel(nn.Module):
    """
    A stand-in model that predicts the annotations of known images: one query per ground-truth segment, with class
    logit 10 on the segment's class and mask logits +-20. With `stride=1` its masks have the input's resolution, so
    (the post-processing resizing them to the same size) the predictions equal the annotations exactly; with
    `stride=4` they are sampled like PEM's stride-4 masks and blur the boundaries. `drop_every` removes every n-th
    thing segment, `relabel` changes classes (`{from: to}`).
    """

    def __init__(self, processor, dataset, task, id2label, thing_ids, stride=1, drop_every=None, relabel=None):
        super().__init__()
        self.config = SimpleNamespace(id2label=id2label, thing_ids=thing_ids, num_labels=len(id2label))
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device and a dtype
        self.stride = stride
        self.known = []
        for example in dataset:
            segment_ids = segment_ids_from_image(example[task])
            segments = [(int(s["id"]), int(s["category_id"])) for s in example["segments_info"]]
            things = [k for k, (_, label) in enumerate(segments) if label in thing_ids]
            if drop_every:
                dropped = set(things[::drop_every])
                segments = [segment for k, segment in enumerate(segments) if k not in dropped]
            segments = [(segment_id, (relabel or {}).get(label, label)) for segment_id, label in segments]
            pixel_values = processed(processor, example["image"])[0]
            assert pixel_values.shape[-2:] == segment_ids.shape, "the processor must keep the image size"
            self.known.append((pixel_values, torch.from_numpy(segment_ids), segments))

    def forward(self, pixel_values, **kwargs):
        batch_size, _, height, width = pixel_values.shape
        num_labels, num_queries = len(self.config.id2label), max(len(known[2]) for known in self.known) + 2
        class_logits = torch.zeros(batch_size, num_queries, num_labels + 1)
        class_logits[..., num_labels] = 10.0  # "no object"
        mask_logits = torch.full((batch_size, num_queries, height // self.stride, width // self.stride), -20.0)
        for index in range(batch_size):
            matches = [
                known
                for known in self.known
                if known[0].shape[-2] <= height
                and known[0].shape[-1] <= width
                and torch.equal(pixel_values[index, :, : known[0].shape[-2], : known[0].shape[-1]], known[0])
            ]
            assert len(matches) == 1, "unknown input"
            _, segment_ids, segments = matches[0]
            offset = self.stride // 2
            sampled = segment_ids[offset :: self.stride, offset :: self.stride]
            for query, (segment_id, label) in enumerate(segments):
                class_logits[index, query] = 0.0
                class_logits[index, query, label] = 10.0
                mask = torch.where(sampled == segment_id, 20.0, -20.0)
                mask_logits[index, query, : mask.shape[0], : mask.shape[1]] = mask
        return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


class ConstantModel(nn.Module):
    """A stand-in model predicting one class everywhere."""

    def __init__(self, id2label, label):
        super().__init__()
        self.config = SimpleNamespace(id2label=id2label, thing_ids=None, num_labels=len(id2label))
        self.anchor = nn.Parameter(torch.zeros(()))
        self.label = label

    def forward(self, pixel_values, **kwargs):
        batch_size, _, height, width = pixel_values.shape
        num_labels = len(self.config.id2label)
        class_logits = torch.zeros(batch_size, 4, num_labels + 1)
        class_logits[..., num_labels] = 10.0
        class_logits[:, 0] = 0.0
        class_logits[:, 0, self.label] = 10.0
        mask_logits = torch.full((batch_size, 4, height // 4, width // 4), -20.0)
        mask_logits[:, 0] = 20.0
        return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def oracle(processor, dataset, task, **kwargs) -> GroundTruthModel:
    return GroundTruthModel(processor, dataset, task, CITYSCAPES_NAMES, CITYSCAPES_THINGS, **kwargs)


def test_oracle_semantic_prediction_scores_100(cityscapes_root):
    panoptic = load_cityscapes(cityscapes_root, split="val", task="panoptic")
    semantic = load_cityscapes(cityscapes_root, split="val", task="semantic")
    processor = cityscapes_processor("semantic")
    results = evaluate_model(
        oracle(processor, panoptic, "panoptic"), processor, semantic, batch_size=2, progress=False
    )
    assert results["mIoU"] == results["mAcc"] == results["pAcc"] == 100.0
    present = {int(c) for path in semantic["semantic"] for c in np.unique(np.array(path))} - {255}
    for index, name in CITYSCAPES_NAMES.items():
        assert results[f"IoU-{name}"] == 100.0 if index in present else math.isnan(results[f"IoU-{name}"])


def test_oracle_panoptic_and_instance_predictions_score_100(cityscapes_root):
    processor = cityscapes_processor("panoptic")
    panoptic = load_cityscapes(cityscapes_root, split="val", task="panoptic")
    assert any(s["iscrowd"] for segments in panoptic["segments_info"] for s in segments)  # crowd regions included
    results = evaluate_model(
        oracle(processor, panoptic, "panoptic"), processor, panoptic, task="panoptic", batch_size=2, progress=False
    )
    for name in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "SQ_th", "RQ_st", "mIoU", "pAcc"):
        assert results[name] == pytest.approx(100.0, abs=1e-9), name

    instance = load_cityscapes(cityscapes_root, split="val", task="instance")
    results = evaluate_model(
        oracle(processor, instance, "instance"), processor, instance, task="instance", progress=False
    )
    for name in ("AP", "AP50", "AP75"):
        assert results[name] == pytest.approx(100.0, abs=1e-9), name


def test_oracle_with_mixed_sizes_and_reduced_ade20k_labels_scores_100(ade20k_root):
    id2label = {index: label[0] for index, label in enumerate(ADE20K_LABELS)}
    panoptic = load_ade20k(ade20k_root, split="val", task="panoptic")
    semantic = load_ade20k(ade20k_root, split="val", task="semantic")  # raw annotations: class c stored as c + 1
    processor = PEMImageProcessor.from_preset(
        "pem-r50-ade20k-semantic", size={"shortest_edge": 48, "longest_edge": 200}
    )
    assert processor.do_reduce_labels
    model = GroundTruthModel(processor, panoptic, "panoptic", id2label, ADE20K_THINGS)
    results = evaluate_model(model, processor, semantic, batch_size=4, progress=False)
    assert results["mIoU"] == results["pAcc"] == 100.0

    # the command line's ADE20K panoptic dataset: the mIoU of panoptic models uses the semantic annotations
    with_semantic = load_evaluation_dataset("ade20k", ade20k_root.parent, "val", "panoptic")
    assert with_semantic["image_id"] == panoptic["image_id"] and "semantic" in with_semantic.column_names
    processor = PEMImageProcessor.from_preset(
        "pem-r50-ade20k-panoptic", size={"shortest_edge": 48, "longest_edge": 200}
    )
    model = GroundTruthModel(processor, panoptic, "panoptic", id2label, ADE20K_THINGS)
    results = evaluate_model(
        model, processor, with_semantic, "panoptic", batch_size=4, reduce_labels=True, progress=False
    )
    assert results["PQ"] == results["mIoU"] == results["pAcc"] == 100.0


def test_constant_prediction_gives_the_known_iou(cityscapes_root):
    dataset = load_cityscapes(cityscapes_root, split="val", task="semantic")
    processor = cityscapes_processor("semantic")
    road = 0
    model = ConstantModel(CITYSCAPES_NAMES, road)
    results = evaluate_model(model, processor, dataset, batch_size=2, num_workers=1, progress=False)
    files = dataset.cast_column("semantic", datasets.Image(decode=False))["semantic"]
    labels = np.stack([np.array(PIL.Image.open(file["path"])) for file in files])
    valid = labels != 255
    present = set(np.unique(labels[valid]).tolist())
    road_iou = (labels == road).sum() / valid.sum()
    assert results["IoU-road"] == pytest.approx(100 * road_iou)
    assert results["pAcc"] == pytest.approx(100 * road_iou)
    assert results["mIoU"] == pytest.approx(100 * road_iou / len(present | {road}))
    assert results["mAcc"] == pytest.approx(100 / len(present))
    for index, name in CITYSCAPES_NAMES.items():
        if index != road:
            assert results[f"IoU-{name}"] == 0.0 if index in present else math.isnan(results[f"IoU-{name}"])


# ---------------------------------------------------------------------------------------------------------------------
# Export formats, read by the official scorers
# ---------------------------------------------------------------------------------------------------------------------


def test_cityscapes_exports_are_scored_like_the_official_scripts(cityscapes_root, tmp_path):
    processor = cityscapes_processor("panoptic")
    dataset = load_cityscapes(cityscapes_root, split="val", task="panoptic")
    # stride-4 masks, dropped instances and a wrong class: far from perfect, every kind of error
    model = oracle(processor, dataset, "panoptic", stride=4, drop_every=2, relabel={1: 0})
    results = evaluate_model(model, processor, dataset, task="panoptic", export_dir=tmp_path, progress=False)
    assert 5 < results["PQ"] < 95 and 5 < results["mIoU"] < 95
    exported = json.loads((tmp_path / "panoptic.json").read_text())
    assert [annotation["image_id"] for annotation in exported["annotations"]] == dataset["image_id"]
    for annotation in exported["annotations"]:  # the official inference fuses each stuff class into one segment
        stuff = [segment["category_id"] for segment in annotation["segments_info"] if not segment["isthing"]]
        assert len(stuff) == len(set(stuff))

    ground_truth = sorted((cityscapes_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [tmp_path / "semantic" / path.name.replace("_gtFine_", "_") for path in ground_truth]
    assert all(path.exists() for path in predictions)
    args = copy.copy(cityscapes_pixel.args)
    args.evalInstLevelScore, args.evalPixelAccuracy, args.JSONOutput, args.quiet = False, False, False, True
    with contextlib.redirect_stdout(io.StringIO()):
        official = cityscapes_pixel.evaluateImgLists(
            [str(p) for p in predictions], [str(p) for p in ground_truth], args
        )
    assert results["mIoU"] == pytest.approx(100 * official["averageScoreClasses"], abs=1e-6)
    for name in CITYSCAPES_NAMES.values():
        expected = official["classScores"][name]
        assert results[f"IoU-{name}"] == pytest.approx(100 * expected, abs=1e-6, nan_ok=True), name

    gt_json = cityscapes_root / "gtFine" / "cityscapes_panoptic_val.json"
    with contextlib.redirect_stdout(io.StringIO()):
        official = cityscapes_panoptic.evaluatePanoptic(
            gt_json, gt_json.with_suffix(""), tmp_path / "panoptic.json", tmp_path / "panoptic", tmp_path / "pq.json"
        )
    for ours, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for name in ("pq", "sq", "rq"):
            assert results[name.upper() + ours] == pytest.approx(100 * official[group][name], abs=1e-6), name + ours

    semantic = load_cityscapes(cityscapes_root, split="val", task="semantic")
    semantic_results = evaluate_model(
        model, processor, semantic, export_dir=tmp_path / "semantic_task", progress=False
    )
    assert semantic_results["mIoU"] == pytest.approx(results["mIoU"], abs=1e-9)
    assert len(list((tmp_path / "semantic_task" / "semantic").glob("*_labelIds.png"))) == len(semantic)


def test_instance_export_is_read_by_coco_and_gives_the_same_ap(cityscapes_root, tmp_path):
    processor = cityscapes_processor("panoptic")
    dataset = load_cityscapes(cityscapes_root, split="val", task="instance")
    model = oracle(processor, dataset, "instance", stride=4, drop_every=3)
    results = evaluate_model(model, processor, dataset, task="instance", export_dir=tmp_path, progress=False)
    assert 5 < results["AP"] < 95

    # ground truth in COCO format, built from the annotation files; categories are Cityscapes label ids
    images, annotations = [], []
    for example in dataset:
        ids = segment_ids_from_image(example["instance"])  # RGB-encoded ids
        images.append({"id": example["image_id"], "height": ids.shape[0], "width": ids.shape[1]})
        for segment in example["segments_info"]:
            mask = ids == segment["id"]
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": example["image_id"],
                    "category_id": CITYSCAPES_LABELS[segment["category_id"]][3],
                    "iscrowd": segment["iscrowd"],
                    "segmentation": rle,
                    "area": float(mask.sum()),
                }
            )
    categories = [{"id": CITYSCAPES_LABELS[index][3]} for index in CITYSCAPES_THINGS]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        detections = coco.loadRes(str(tmp_path / "instances.json"))
        evaluation = COCOeval(coco, detections, iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    for name, value in zip(("AP", "AP50", "AP75"), evaluation.stats[:3]):
        assert results[name] == pytest.approx(100 * value, abs=1e-6), name


def test_ade20k_semantic_export_uses_the_challenge_format(tiny_model, ade20k_root, tmp_path):
    dataset = load_ade20k(ade20k_root, split="val", task="semantic")
    model = ade20k_model(tiny_model)
    processor = PEMImageProcessor.from_preset(
        "pem-r50-ade20k-semantic", size={"shortest_edge": 48, "longest_edge": 200}
    )
    evaluate_model(model, processor, dataset.select([0, 1]), export_dir=tmp_path, progress=False)
    for example in dataset.select([0, 1]):
        exported = np.array(PIL.Image.open(tmp_path / "semantic" / f"{example['image_id']}.png"))
        prediction = predict(model, processor, [example["image"]])[0]["semantic"].numpy()
        np.testing.assert_array_equal(exported, prediction + 1)  # class c is written as c + 1, 0 = "other"


# ---------------------------------------------------------------------------------------------------------------------
# API and command line
# ---------------------------------------------------------------------------------------------------------------------


def test_clear_errors(tiny_model, cityscapes_root):
    dataset = load_cityscapes(cityscapes_root, split="val", task="semantic")
    processor = cityscapes_processor()
    with pytest.raises(ValueError, match="Unknown task"):
        evaluate_model(tiny_model, processor, dataset, task="depth")
    with pytest.raises(ValueError, match="needs the columns"):
        evaluate_model(tiny_model, processor, dataset, task="panoptic")
    with pytest.raises(ValueError, match="scales"):
        predict(tiny_model, processor, [rgb_image(0, 32, 32)], scales=[])
    with pytest.raises(ValueError, match="sliding_window_stride needs"):
        predict(tiny_model, processor, [rgb_image(0, 32, 32)], sliding_window_stride=16)
    with pytest.raises(ValueError, match="semantic predictions only"):
        evaluate_model(
            tiny_model, processor, load_cityscapes(cityscapes_root, "val", "instance"), "instance", flip=True
        )


def test_amp_runs_the_model_in_bfloat16_and_post_processes_in_float32(tiny_model):
    processor = cityscapes_processor("panoptic", height=64)
    images = [rgb_image(0, 64, 128)]
    exact = predict(tiny_model, processor, images, task="panoptic", return_scores=True)[0]
    amp = predict(tiny_model, processor, images, task="panoptic", return_scores=True, precision="amp")[0]
    assert amp["semantic_scores"].dtype == torch.float32 and amp["semantic"].shape == exact["semantic"].shape
    # bfloat16 keeps 8 bits of mantissa: the scores move (so autocast was on), but stay close.
    difference = (amp["semantic_scores"] - exact["semantic_scores"]).abs().max()
    assert 0 < difference < 0.1
    assert amp["panoptic"]["segmentation"].shape == exact["panoptic"]["segmentation"].shape
    with pytest.raises(ValueError, match="Unknown precision"):
        predict(tiny_model, processor, images, precision="fp16")


def test_format_results_table():
    table = format_results_table({"PQ": 61.14, "PQ_th": 54.3, "PQ_st": float("nan"), "PQ-car": 50.0}, "panoptic")
    lines = table.splitlines()
    assert lines[0] == "| PQ | PQ_th | PQ_st |"
    assert lines[2] == "| 61.1 | 54.3 | – |"
    assert "| car | 50.0 |" in lines


def test_command_line(tiny_model, cityscapes_root, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    tiny_model.save_pretrained(checkpoint)
    cityscapes_processor("semantic").save_pretrained(checkpoint)
    argv = [str(checkpoint), "--dataset", "cityscapes", "--data-root", str(cityscapes_root), "--split", "val"]
    argv += ["--scales", "48", "64", "--flip", "--sliding-window", "32", "64", "--batch-size", "2"]
    argv += ["--max-images", "2", "--no-progress", "--device", "cpu", "--allocator", "default"]  # keep glibc's here
    argv += ["--output", str(tmp_path / "results.json")]
    results = main(argv)
    folded = main([*argv[:-1], str(tmp_path / "folded.json"), "--fold-batch-norm", "--precision", "amp"])
    assert folded["settings"]["fold_batch_norm"] and folded["settings"]["precision"] == "amp"
    assert results["settings"]["precision"] == "fp32" and not results["settings"]["fold_batch_norm"]
    printed = capsys.readouterr().out
    assert printed.startswith("| mIoU | mAcc | pAcc |") and "| road |" in printed and "images/s" in printed
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["num_images"] == 2 and written["task"] == "semantic"
    assert written["settings"]["scales"] == [48, 64] and written["settings"]["sliding_window"] == [32, 64]
    assert written["metrics"]["mIoU"] == pytest.approx(results["metrics"]["mIoU"])
    assert set(written["metrics"]) >= {"mIoU", "mAcc", "pAcc", "IoU-road"}


def test_command_line_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="missing' does not exist: pass a folder written by save_pretrained"):
        main([str(tmp_path / "missing"), "--dataset", "cityscapes", "--data-root", str(tmp_path)])


@pytest.mark.slow
def test_evaluation_entry_points_run_from_the_scripts_folder():
    # Run from scripts/ (first on the import path of every script there), the metrics must still import the
    # `evaluate` library: no module of ours is named like it.
    commands = [
        ["-m", "transformers_pem.cli.evaluate", "--help"],
        [str(ROOT / "scripts" / "evaluate_checkpoint.py"), "--help"],
    ]
    for command in commands:
        completed = subprocess.run(
            [sys.executable, *command],
            capture_output=True,
            text=True,
            cwd=ROOT / "scripts",
            timeout=300,
            env={"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        assert completed.returncode == 0, completed.stderr
        assert "--sliding-window" in completed.stdout


@pytest.mark.parametrize(
    "options, message",
    [
        (["--max-size", "512"], "--max-size caps the test-time scales: pass --tta or --scales"),
        (["--stride", "32"], "--stride is the sliding window's: pass --sliding-window"),
        (["--sliding-window", "32", "--stride", "8", "8", "8"], "--stride takes 1 or 2 values"),
        (["--onnx", "--precision", "amp"], "--onnx runs the exported model as it is"),
    ],
)
def test_command_line_refuses_options_that_would_be_ignored_before_loading(tmp_path, options, message):
    """Each message comes before the model loads: the checkpoint folder is empty (its load would fail otherwise)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(message)):
        main([str(empty), "--dataset", "cityscapes", "--data-root", str(tmp_path), *options])


def test_command_line_reads_the_data_before_the_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as raised:
        main([str(empty), "--dataset", "cityscapes", "--data-root", str(tmp_path / "no-data")])
    assert "no-data" in str(raised.value) and "config.json" not in str(raised.value)
