"""The streaming metrics against the official scorers on generated random and adversarial cases.

References: cityscapesscripts' `evalPixelLevelSemanticLabeling` (mean IoU, labelIds PNG files) and
`evalPanopticSemanticLabeling.evaluatePanoptic` (PQ, COCO-panoptic PNG + JSON), pycocotools' `COCOeval` on COCO
JSON files (mask AP), the Hub `mean_iou` documentation example, and a per-pixel re-implementation of the Hub
`mean_iou` rules for its options.
"""

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cityscapes_panoptic
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cityscapes_pixel
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import transformers_pem.evaluation.metrics
from transformers_pem.evaluation.metrics import MaskAP, MeanIoU, PanopticQuality

METRIC_SCRIPTS = Path(transformers_pem.evaluation.metrics.__file__).parent / "metric_scripts"
TOLERANCE = 1e-6


def assert_same(ours: float, official: float, what: str):
    if math.isnan(official):
        assert math.isnan(ours), f"{what}: ours {ours}, official NaN"
    else:
        assert abs(ours - official) <= TOLERANCE, f"{what}: ours {ours}, official {official}"


def paint_rectangle(rng, canvas: np.ndarray, value: int, max_side: int, min_side: int = 1) -> np.ndarray:
    """Paints `value` into a random rectangle of `canvas` and returns the rectangle's mask."""
    height, width = canvas.shape
    rect_h = int(rng.integers(min_side, min(max_side, height) + 1))
    rect_w = int(rng.integers(min_side, min(max_side, width) + 1))
    top, left = int(rng.integers(0, height - rect_h + 1)), int(rng.integers(0, width - rect_w + 1))
    mask = np.zeros(canvas.shape, dtype=bool)
    mask[top : top + rect_h, left : left + rect_w] = True
    canvas[mask] = value
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Mean IoU
# ----------------------------------------------------------------------------------------------------------------

ID_TO_TRAIN_ID = np.full(256, 255, dtype=np.int64)
TRAIN_ID_TO_ID = np.zeros(256, dtype=np.uint8)  # void predictions (255) become "unlabeled" (0), ignored in eval
TRAIN_ID_TO_NAME = {}
for _label in cityscapes_labels:
    if 0 <= _label.id and not _label.ignoreInEval:
        ID_TO_TRAIN_ID[_label.id] = _label.trainId
        TRAIN_ID_TO_ID[_label.trainId] = _label.id
        TRAIN_ID_TO_NAME[_label.trainId] = _label.name
LABEL_IDS = [label.id for label in cityscapes_labels if label.id >= 0]


def semantic_case(rng, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A Cityscapes ground truth in labelIds and a prediction in train ids (255 = void prediction)."""
    height, width = int(rng.integers(12, 40)), int(rng.integers(12, 48))
    if kind == "all_ignored":  # no evaluated pixel: every class is NaN
        labels = np.full((height, width), int(rng.choice([0, 1, 4, 9, 14, 29])), dtype=np.uint8)
    else:
        labels = np.full((height, width), int(rng.choice(LABEL_IDS)), dtype=np.uint8)
        palette = [7, 23, 26, 0, 4] if kind == "few_classes" else LABEL_IDS
        for _ in range(int(rng.integers(3, 15))):
            paint_rectangle(rng, labels, int(rng.choice(palette)), max_side=20)
    prediction = ID_TO_TRAIN_ID[labels].copy()
    prediction[prediction == 255] = rng.integers(0, 19, size=int((prediction == 255).sum()))
    num_errors = {"perfect": 0, "few_classes": 6, "random": 10, "all_ignored": 3, "void_prediction": 4}[kind]
    for _ in range(num_errors):
        # few_classes also predicts classes absent from the ground truth (bus 15, train 16)
        values = [15, 16, 255] if kind in ("few_classes", "void_prediction") else list(range(19)) + [255]
        paint_rectangle(rng, prediction, int(rng.choice(values)), max_side=12)
    if kind == "void_prediction":
        prediction[: height // 2] = 255
    if kind != "perfect":
        prediction[int(rng.integers(height)), int(rng.integers(width))] = int(rng.integers(19))  # 1-pixel segment
    return labels, prediction


def cityscapes_pixel_scores(tmp_path: Path, cases) -> dict:
    args = copy.copy(cityscapes_pixel.args)
    args.evalInstLevelScore, args.evalPixelAccuracy, args.JSONOutput, args.quiet = False, False, False, True
    prediction_files, label_files = [], []
    for index, (labels, prediction) in enumerate(cases):
        label_files.append(str(tmp_path / f"city_{index:06d}_000019_gtFine_labelIds.png"))
        prediction_files.append(str(tmp_path / f"city_{index:06d}_000019_pred.png"))
        Image.fromarray(labels).save(label_files[-1])
        Image.fromarray(TRAIN_ID_TO_ID[prediction]).save(prediction_files[-1])
    with contextlib.redirect_stdout(io.StringIO()):
        return cityscapes_pixel.evaluateImgLists(prediction_files, label_files, args)


@pytest.mark.parametrize(
    "seed, kinds",
    [
        (0, ["random"] * 4),
        (1, ["few_classes", "void_prediction", "random"]),
        (2, ["perfect", "all_ignored", "few_classes"]),
        (3, ["all_ignored", "all_ignored"]),
        (4, ["void_prediction"] * 3),
    ],
)
def test_mean_iou_equals_cityscapes(tmp_path, seed, kinds):
    rng = np.random.default_rng(seed)
    cases = [semantic_case(rng, kind) for kind in kinds]
    official = cityscapes_pixel_scores(tmp_path, cases)

    metric = MeanIoU()
    for labels, prediction in cases:
        metric.add(prediction=prediction, reference=ID_TO_TRAIN_ID[labels])
    ours = metric.compute(num_labels=19, ignore_index=255)

    for train_id, name in TRAIN_ID_TO_NAME.items():
        assert_same(ours["per_category_iou"][train_id], official["classScores"][name], name)
    assert_same(ours["mean_iou"], official["averageScoreClasses"], "mean IoU")


def test_mean_iou_hub_documentation_example():
    """The example (inputs and printed result) of the Hub `mean_iou` metric card."""
    predictions = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    references = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    results = MeanIoU().compute(predictions=predictions, references=references, num_labels=10, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(0.47750000000000004, abs=1e-12)
    assert results["mean_accuracy"] == pytest.approx(0.5916666666666666, abs=1e-12)
    assert results["overall_accuracy"] == pytest.approx(0.5263157894736842, abs=1e-12)
    np.testing.assert_allclose(results["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(
        results["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1], rtol=0, atol=1e-12
    )


def pixelwise_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num, label_map, reduce_labels):
    """The Hub `mean_iou` rules, pixel by pixel: the reference is mapped, then ignored pixels are dropped; a pixel
    counts for the reference (prediction) class only if that value lies in [0, num_labels)."""
    intersection, predicted, labelled = np.zeros(num_labels), np.zeros(num_labels), np.zeros(num_labels)
    for prediction, reference in zip(predictions, references):
        for p, r in zip(np.ravel(prediction).tolist(), np.ravel(reference).tolist()):
            r = (label_map or {}).get(r, r)
            if reduce_labels:
                r = 255 if r in (0, 255) else r - 1
            if r == ignore_index:
                continue
            if 0 <= r < num_labels:
                labelled[r] += 1
            if 0 <= p < num_labels:
                predicted[p] += 1
                intersection[p] += p == r
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / (predicted + labelled - intersection)
        accuracy = intersection / labelled
        overall = intersection.sum() / labelled.sum()
    results = {
        "mean_iou": np.nanmean(iou) if not np.all(np.isnan(iou)) else np.nan,
        "mean_accuracy": np.nanmean(accuracy) if not np.all(np.isnan(accuracy)) else np.nan,
        "overall_accuracy": overall,
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        results = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in results.items()}
    return results


@pytest.mark.parametrize(
    "options",
    [
        {"ignore_index": 255, "nan_to_num": None, "label_map": None, "reduce_labels": True},
        {"ignore_index": 255, "nan_to_num": -1.0, "label_map": {3: 0, 0: 3, 7: 255}, "reduce_labels": False},
        {"ignore_index": 2, "nan_to_num": 0.0, "label_map": {2: 5}, "reduce_labels": True},
        {"ignore_index": None, "nan_to_num": None, "label_map": None, "reduce_labels": False},
    ],
)
def test_mean_iou_options_follow_hub_rules(options):
    rng = np.random.default_rng(5)
    # values beyond num_labels (7, 9) and negative predictions exercise the out-of-range rules
    references = [rng.choice([0, 1, 2, 3, 4, 7, 255], size=shape) for shape in [(6, 7), (5, 4), (3, 9)]]
    predictions = [rng.integers(-1, 9, size=reference.shape) for reference in references]
    ours = MeanIoU().compute(predictions=predictions, references=references, num_labels=6, **options)
    expected = pixelwise_mean_iou(predictions, references, num_labels=6, **options)
    for name, value in expected.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-12, err_msg=name)


def test_mean_iou_streaming_input_forms_and_no_arrow_cache(tmp_path):
    rng = np.random.default_rng(6)
    references = [rng.integers(0, 5, size=shape).astype(np.uint8) for shape in [(9, 13), (17, 4), (8, 8)]]
    predictions = [rng.integers(0, 5, size=reference.shape).astype(np.uint8) for reference in references]
    expected = pixelwise_mean_iou(predictions, references, 5, 255, None, None, False)

    metric = MeanIoU(cache_dir=str(tmp_path))
    metric.add(prediction=torch.from_numpy(predictions[0]), reference=Image.fromarray(references[0]))
    metric.add_batch(predictions=[torch.tensor(predictions[1], dtype=torch.float32)], references=references[1:2])
    assert len(metric) == 2
    ours = metric.compute(predictions=predictions[2:], references=references[2:], num_labels=5, ignore_index=255)
    np.testing.assert_allclose(ours["per_category_iou"], expected["per_category_iou"], rtol=0, atol=1e-12)
    assert ours["overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    assert len(metric) == 0 and metric.writer is None
    assert not [path for path in tmp_path.rglob("*") if path.is_file()], "nothing may be written to the cache"
    with pytest.raises(ValueError, match="before any example"):
        metric.compute(num_labels=5, ignore_index=255)


def test_mean_iou_rejects_bad_input():
    metric = MeanIoU()
    with pytest.raises(ValueError, match="does not match its reference"):
        metric.add(prediction=np.zeros((4, 5), dtype=int), reference=np.zeros((5, 4), dtype=int))
    with pytest.raises(ValueError, match="integer values"):
        metric.add(prediction=np.full((2, 2), 0.5), reference=np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        metric.add(prediction=np.zeros((1, 2, 2), dtype=int), reference=np.zeros((1, 2, 2), dtype=int))
    with pytest.raises(ValueError, match="one reference per prediction"):
        metric.add_batch(predictions=[np.zeros((2, 2), dtype=int)], references=[])
    metric.add(prediction=np.zeros((2, 2), dtype=int), reference=np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="num_labels"):
        metric.compute(num_labels=0, ignore_index=255)
    assert metric.compute(num_labels=1, ignore_index=255)["mean_iou"] == 1.0  # statistics survived the error


# ----------------------------------------------------------------------------------------------------------------
# Panoptic quality
# ----------------------------------------------------------------------------------------------------------------

STUFF_IDS, THING_IDS = [7, 8, 11, 23], [24, 26, 33]


def id_to_rgb(id_map: np.ndarray) -> np.ndarray:
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // 256**2 % 256], axis=-1).astype(np.uint8)


def panoptic_case(rng, empty_prediction: bool = False) -> tuple[dict, dict]:
    """A COCO-panoptic reference with void, crowd and tiny segments, and a prediction derived from it with shifted,
    missed, mislabelled and spurious segments (some lying mostly on void or on crowd regions)."""
    height, width = int(rng.integers(24, 48)), int(rng.integers(24, 64))
    new_ids = iter(rng.choice(np.arange(1, 2**24), size=100, replace=False).tolist())
    reference = np.zeros((height, width), dtype=np.int64)
    categories = {}
    band_edges = [0, *sorted(rng.choice(np.arange(1, height), size=3, replace=False).tolist()), height]
    stuff_segment_ids = {}
    for top, bottom in zip(band_edges[:-1], band_edges[1:]):
        category = int(rng.choice(STUFF_IDS))
        segment_id = stuff_segment_ids.setdefault(category, next(new_ids))
        reference[top:bottom] = segment_id
        categories[segment_id] = (category, 0)
    void_mask = paint_rectangle(rng, reference, 0, max_side=14, min_side=4)
    for index in range(int(rng.integers(3, 9))):
        segment_id, category = next(new_ids), int(rng.choice(THING_IDS))
        is_crowd = int(rng.random() < 0.2)
        paint_rectangle(rng, reference, segment_id, max_side=2 if index == 0 else 14)  # the first one is tiny
        categories[segment_id] = (category, is_crowd)
    present = set(np.unique(reference).tolist())
    reference_info = [
        {"id": i, "category_id": c, "iscrowd": crowd} for i, (c, crowd) in categories.items() if i in present
    ]

    prediction = np.zeros_like(reference)
    predicted_categories = {}
    if not empty_prediction:
        for segment in reference_info:
            if rng.random() < 0.2:  # missed segment
                continue
            mask = np.roll(reference == segment["id"], tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
            category = segment["category_id"] if rng.random() < 0.8 else int(rng.choice(STUFF_IDS + THING_IDS))
            segment_id = next(new_ids) % 1000 + 1  # small ids, as from post-processing (may collide: a merge)
            prediction[mask] = segment_id
            predicted_categories[segment_id] = category
        for _ in range(int(rng.integers(1, 4))):  # spurious segments, some with classes absent from the reference
            segment_id = next(new_ids) % 1000 + 1
            paint_rectangle(rng, prediction, segment_id, max_side=10)
            predicted_categories[segment_id] = int(rng.choice(STUFF_IDS + THING_IDS))
        void_rows, void_cols = np.nonzero(void_mask)
        segment_id = next(new_ids) % 1000 + 1  # a segment lying mostly on void
        prediction[void_rows.min() : void_rows.max() + 2, void_cols.min() : void_cols.max() + 2] = segment_id
        predicted_categories[segment_id] = int(rng.choice(THING_IDS))
        for crowd in [segment for segment in reference_info if segment["iscrowd"]]:
            # a segment of the crowd's class, partly on the crowd region
            rows, cols = np.nonzero(reference == crowd["id"])
            segment_id = next(new_ids) % 1000 + 1
            prediction[rows.min() : rows.max() + 2, cols.min() : cols.max() + 1] = segment_id
            predicted_categories[segment_id] = crowd["category_id"]
    predicted_present = set(np.unique(prediction).tolist())
    prediction_info = [{"id": i, "category_id": c} for i, c in predicted_categories.items() if i in predicted_present]
    return (
        {"segmentation": prediction, "segments_info": prediction_info},
        {"segmentation": reference, "segments_info": reference_info},
    )


def boundary_panoptic_case() -> tuple[dict, dict]:
    """Hand-made ties: IoU of exactly 0.5 (no match), void/crowd share of exactly 0.5 (still a false positive),
    and a match that exists only because predicted pixels on void leave the union."""
    reference = np.full((32, 40), 1, dtype=np.int64)  # road, id 1
    reference[16:] = 2  # sky, id 2
    reference[0:4, 0:4] = 3  # car, 16 pixels
    reference[8:10, 20:23] = 4  # car, 6 pixels
    reference[8:10, 23:26] = 0  # void, 6 pixels
    reference[20:30, 30:40] = 0  # void
    reference[4:8, 30:34] = 5  # crowd person, 16 pixels
    reference[12:16, 0:6] = 6  # person, 24 pixels
    reference[12:14, 30:36] = 7  # a second person crowd, listed first: the official scripts use the last one
    reference_info = [
        {"id": 1, "category_id": 7, "iscrowd": 0},
        {"id": 2, "category_id": 23, "iscrowd": 0},
        {"id": 3, "category_id": 26, "iscrowd": 0},
        {"id": 4, "category_id": 26, "iscrowd": 0},
        {"id": 7, "category_id": 24, "iscrowd": 1},
        {"id": 5, "category_id": 24, "iscrowd": 1},
        {"id": 6, "category_id": 24, "iscrowd": 0},
    ]
    prediction = np.full((32, 40), 10, dtype=np.int64)  # road
    prediction[16:] = 20  # sky
    prediction[0:2, 0:4] = 30  # car: 8 pixels, all on car 3 -> IoU 8 / 16 = 0.5, no match
    prediction[8:10, 20:26] = 50  # car: 6 on car 4, 6 on void -> IoU 6 / 6 once void leaves the union (else 0.5)
    prediction[20:24, 28:32] = 40  # person: 8 of 16 pixels on void -> share 0.5, a false positive
    prediction[24:28, 29:33] = 41  # person: 12 of 16 pixels on void -> ignored
    prediction[4:8, 32:36] = 60  # person: 8 of 16 pixels on the person crowd -> share 0.5, a false positive
    prediction[4:8, 30:32] = 61  # bicycle on the person crowd -> a false positive (crowd of another class)
    prediction[12:16, 0:6] = 70  # person: a perfect match
    prediction[12:14, 30:36] = 62  # person on the first-listed crowd -> a false positive
    prediction_info = [
        {"id": 10, "category_id": 7},
        {"id": 20, "category_id": 23},
        {"id": 30, "category_id": 26},
        {"id": 40, "category_id": 24},
        {"id": 41, "category_id": 24},
        {"id": 50, "category_id": 26},
        {"id": 60, "category_id": 24},
        {"id": 61, "category_id": 33},
        {"id": 62, "category_id": 24},
        {"id": 70, "category_id": 24},
    ]
    return (
        {"segmentation": prediction, "segments_info": prediction_info},
        {"segmentation": reference, "segments_info": reference_info},
    )


def cityscapes_panoptic_results(tmp_path: Path, cases) -> dict:
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
    annotations = {"gt": [], "pred": []}
    for index, (prediction, reference) in enumerate(cases):
        for folder, segments in (("pred", prediction), ("gt", reference)):
            Image.fromarray(id_to_rgb(segments["segmentation"])).save(tmp_path / folder / f"{index}.png")
            info = [dict(s, area=int((segments["segmentation"] == s["id"]).sum())) for s in segments["segments_info"]]
            annotations[folder].append({"image_id": str(index), "file_name": f"{index}.png", "segments_info": info})
    categories = [{"id": c, "name": str(c), "isthing": int(c in THING_IDS)} for c in STUFF_IDS + THING_IDS]
    for folder in ("gt", "pred"):
        with open(tmp_path / f"{folder}.json", "w") as file:
            json.dump({"categories": categories, "annotations": annotations[folder]}, file)
    with contextlib.redirect_stdout(io.StringIO()):
        return cityscapes_panoptic.evaluatePanoptic(
            tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json", tmp_path / "pred", tmp_path / "pq.json"
        )


def assert_panoptic_equal(ours: dict, official: dict):
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        for name in ("pq", "sq", "rq"):
            assert_same(ours[name + suffix], official[group][name], f"{name}{suffix}")
        group_ids = {"All": STUFF_IDS + THING_IDS, "Things": THING_IDS, "Stuff": STUFF_IDS}[group]
        counted = [c for c in group_ids if not math.isnan(ours["per_category_pq"][c])]
        assert len(counted) == official[group]["n"], f"{group}: classes in the average"
    for category, scores in official["per_class"].items():
        for name in ("pq", "sq", "rq"):
            value = ours[f"per_category_{name}"][category]
            if math.isnan(value):  # a class without TP, FP and FN: the official scripts print 0.0
                assert scores[name] == 0.0
            else:
                assert_same(value, scores[name], f"{name} of class {category}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_quality_equals_cityscapes(tmp_path, seed):
    rng = np.random.default_rng(seed)
    cases = [panoptic_case(rng, empty_prediction=index == 2) for index in range(4)]
    if seed == 0:
        cases.append(boundary_panoptic_case())
    official = cityscapes_panoptic_results(tmp_path, cases)

    metric = PanopticQuality()
    for prediction, reference in cases:
        metric.add(prediction=prediction, reference=reference)
    ours = metric.compute(thing_ids=THING_IDS, stuff_ids=STUFF_IDS)
    assert_panoptic_equal(ours, official)


def test_panoptic_quality_boundary_case_values():
    """The boundary case alone, against the counts that follow from its construction."""
    prediction, reference = boundary_panoptic_case()
    ours = PanopticQuality().compute(
        predictions=[prediction], references=[reference], thing_ids=[24, 26, 33], stuff_ids=[7, 23]
    )
    # car: segment 50 matches car 4 with IoU 1 (void pixels leave the union); segment 30 does not match car 3
    # (IoU exactly 0.5): 1 TP, 1 FP, 1 FN
    assert ours["per_category_rq"][26] == pytest.approx(1 / 2)
    assert ours["per_category_sq"][26] == pytest.approx(1.0)
    # person: 70 matches person 6; 40 and 60 (share exactly 0.5) and 62 (on the crowd that is not the last listed)
    # are false positives, 41 is ignored: 1 TP, 3 FP
    assert ours["per_category_rq"][24] == pytest.approx(1 / 2.5)
    assert ours["per_category_pq"][33] == 0.0  # bicycle 61: 1 FP
    assert ours["rq_things"] == pytest.approx((0.5 + 0.4 + 0) / 3)


def test_panoptic_quality_accepts_post_processing_output():
    """`label_id`, void -1, float maps, fused duplicate entries and torch tensors give the same result."""
    rng = np.random.default_rng(7)
    cases = [panoptic_case(rng) for _ in range(3)]
    expected = PanopticQuality().compute(
        predictions=[p for p, _ in cases], references=[r for _, r in cases], thing_ids=THING_IDS, stuff_ids=STUFF_IDS
    )
    metric = PanopticQuality()
    for prediction, reference in cases:
        segmentation = torch.tensor(prediction["segmentation"], dtype=torch.float32)
        segmentation[segmentation == 0] = -1
        info = [{"id": s["id"], "label_id": s["category_id"], "score": 0.9} for s in prediction["segments_info"]]
        metric.add(prediction={"segmentation": segmentation, "segments_info": info + info[:2]}, reference=reference)
    ours = metric.compute(thing_ids=THING_IDS, stuff_ids=STUFF_IDS)
    assert ours.keys() == expected.keys()
    for name in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert_same(ours[name], expected[name], name)


def test_panoptic_quality_rejects_bad_input():
    prediction, reference = boundary_panoptic_case()
    metric = PanopticQuality()
    with pytest.raises(ValueError, match="not in segments_info"):
        metric.add(prediction={"segmentation": prediction["segmentation"], "segments_info": []}, reference=reference)
    with pytest.raises(ValueError, match=r"Reference ids \[6\] occur"):
        unlisted = [segment for segment in reference["segments_info"] if segment["id"] != 6]
        metric.add(
            prediction=prediction, reference={"segmentation": reference["segmentation"], "segments_info": unlisted}
        )
    with pytest.raises(ValueError, match="reserved for void"):
        metric.add(
            prediction=prediction,
            reference={"segmentation": reference["segmentation"], "segments_info": [{"id": 0, "category_id": 7}]},
        )
    with pytest.raises(ValueError, match="two classes"):
        bad = {
            "segmentation": prediction["segmentation"],
            "segments_info": prediction["segments_info"] + [{"id": 10, "category_id": 8}],
        }
        metric.add(prediction=bad, reference=reference)
    metric.add(prediction=prediction, reference=reference)
    with pytest.raises(ValueError, match="neither thing_ids nor stuff_ids"):
        metric.compute(thing_ids=[24, 26], stuff_ids=[7, 23])
    with pytest.raises(ValueError, match="both thing_ids and stuff_ids"):
        metric.compute(thing_ids=[24, 26, 33, 7], stuff_ids=[7, 23])
    # the failed calls left no partial statistics, and the failed computes kept them
    assert len(metric) == 1
    assert metric.compute(thing_ids=[24, 26, 33], stuff_ids=[7, 23])["rq_things"] == pytest.approx(0.9 / 3)


# ----------------------------------------------------------------------------------------------------------------
# Mask AP
# ----------------------------------------------------------------------------------------------------------------

AP_THING_IDS, AP_STUFF_ID = [1, 2, 3], 10


def instance_case(rng, num_extra_detections: int = 3, no_detections: bool = False):
    """A reference (id map with stuff, void, crowd, small/medium/large instances) and scored, overlapping binary
    predicted masks: shifted copies, duplicates, wrong classes, spurious masks and a stuff-class mask."""
    height, width = 128, 160
    reference = np.zeros((height, width), dtype=np.int64)
    reference[:30] = 1  # stuff
    info = [{"id": 1, "category_id": AP_STUFF_ID, "iscrowd": 0}]
    sides = [(35, 80)] * 2 + [(2, 28)] * 5 + [(100, 120)] * int(rng.random() < 0.6)  # medium, small, large
    for segment_id, (min_side, max_side) in enumerate(sides, start=2):
        paint_rectangle(rng, reference, segment_id, max_side=max_side, min_side=min_side)
        category = int(rng.choice(AP_THING_IDS))
        info.append({"id": segment_id, "category_id": category, "iscrowd": int(rng.random() < 0.15)})
    paint_rectangle(rng, reference, 0, max_side=20, min_side=5)  # void
    present = set(np.unique(reference).tolist())
    info = [segment for segment in info if segment["id"] in present]

    masks, predicted_info = [], []
    if not no_detections:
        for segment in info:
            for copy_index in range(1 + int(rng.random() < 0.3)):  # sometimes a duplicate
                if rng.random() < 0.2:
                    continue
                shift = tuple(rng.integers(-4 - 4 * copy_index, 5 + 4 * copy_index, size=2))
                masks.append(np.roll(reference == segment["id"], shift, axis=(0, 1)))
                category = segment["category_id"] if rng.random() < 0.85 else int(rng.choice(AP_THING_IDS))
                predicted_info.append({"label_id": category, "score": float(rng.random())})
        for _ in range(num_extra_detections):
            mask = np.zeros((height, width), dtype=np.int64)
            masks.append(paint_rectangle(rng, mask, 1, max_side=40))
            predicted_info.append({"label_id": int(rng.choice(AP_THING_IDS)), "score": float(rng.random())})
    segmentation = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return (
        {"segmentation": segmentation, "segments_info": predicted_info},
        {"segmentation": reference, "segments_info": info},
    )


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def cocoeval_results(tmp_path: Path, cases, category_ids) -> tuple[np.ndarray, dict]:
    images, annotations, detections = [], [], []
    for image_id, (prediction, reference) in enumerate(cases, start=1):
        images.append({"id": image_id, "height": 128, "width": 160, "file_name": f"{image_id}.png"})
        for segment in reference["segments_info"]:
            if segment["category_id"] in category_ids:
                mask = reference["segmentation"] == segment["id"]
                encoded = rle(mask)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": segment["category_id"],
                        "iscrowd": segment["iscrowd"],
                        "area": int(mask.sum()),
                        "bbox": mask_utils.toBbox(encoded).tolist(),
                        "segmentation": encoded,
                    }
                )
        for mask, segment in zip(prediction["segmentation"], prediction["segments_info"]):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": segment["label_id"],
                    "score": segment["score"],
                    "segmentation": rle(mask),
                }
            )
    categories = [{"id": c, "name": str(c)} for c in category_ids]
    with open(tmp_path / "gt.json", "w") as file:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, file)
    with open(tmp_path / "detections.json", "w") as file:
        json.dump(detections, file)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(tmp_path / "gt.json"))
        coco_eval = COCOeval(ground_truth, ground_truth.loadRes(str(tmp_path / "detections.json")), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    per_category = {}
    for index, category in enumerate(coco_eval.params.catIds):
        precision = coco_eval.eval["precision"][:, :, index, 0, -1]
        per_category[category] = float(np.mean(precision[precision > -1])) if (precision > -1).any() else math.nan
    return coco_eval.stats, per_category


def assert_ap_equal(ours: dict, stats: np.ndarray, per_category: dict):
    for index, name in enumerate(("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")):
        assert_same(ours[name], math.nan if stats[index] == -1 else stats[index], name)
    assert ours["per_category_ap"].keys() == per_category.keys()
    for category, value in per_category.items():
        assert_same(ours["per_category_ap"][category], value, f"AP of class {category}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_equals_cocoeval(tmp_path, seed):
    rng = np.random.default_rng(seed)
    cases = [instance_case(rng) for _ in range(3)]
    cases.append(instance_case(rng, no_detections=True))
    if seed == 0:
        cases.append(instance_case(rng, num_extra_detections=110))  # more than COCOeval's 100 detections per image
    stats, per_category = cocoeval_results(tmp_path, cases, AP_THING_IDS)

    metric = MaskAP()
    for prediction, reference in cases:
        metric.add(prediction=prediction, reference=reference)
    assert_ap_equal(metric.compute(thing_ids=AP_THING_IDS), stats, per_category)


def test_mask_ap_id_map_predictions_and_default_classes(tmp_path):
    """Post-processing's default instance output (id map, ids from 0, void -1) equals COCOeval on the masks it
    holds; with no thing_ids every class of the references is evaluated (the stuff class included)."""
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(3):
        prediction, reference = instance_case(rng)
        id_map = np.full(reference["segmentation"].shape, -1, dtype=np.int64)
        for index, mask in enumerate(prediction["segmentation"]):
            id_map[mask] = index
        info = [dict(segment, id=index) for index, segment in enumerate(prediction["segments_info"])]
        kept = [segment for segment in info if (id_map == segment["id"]).any()]
        cases.append(({"segmentation": torch.from_numpy(id_map), "segments_info": kept}, reference))
    as_masks = [
        (
            {
                "segmentation": np.stack([p["segmentation"].numpy() == s["id"] for s in p["segments_info"]]),
                "segments_info": p["segments_info"],
            },
            r,
        )
        for p, r in cases
    ]
    reference_classes = sorted({s["category_id"] for _, r in cases for s in r["segments_info"]})
    assert AP_STUFF_ID in reference_classes
    stats, per_category = cocoeval_results(tmp_path, as_masks, reference_classes)
    ours = MaskAP().compute(predictions=[p for p, _ in cases], references=[r for _, r in cases])
    assert_ap_equal(ours, stats, per_category)


def test_mask_ap_without_detections_is_zero():
    rng = np.random.default_rng(4)
    cases = [instance_case(rng, no_detections=True) for _ in range(2)]
    ours = MaskAP().compute(predictions=[p for p, _ in cases], references=[r for _, r in cases], thing_ids=[1, 2, 3])
    assert ours["ap"] == 0.0 and ours["ap50"] == 0.0
    present = {s["category_id"] for _, r in cases for s in r["segments_info"] if not s["iscrowd"]}
    for category, value in ours["per_category_ap"].items():
        assert value == 0.0 if category in present else math.isnan(value)


def test_mask_ap_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(5)
    prediction, reference = instance_case(rng)
    metric = MaskAP()
    with pytest.raises(ValueError, match="segments_info\\[i\\] must describe mask i"):
        metric.add(prediction={"segmentation": prediction["segmentation"], "segments_info": []}, reference=reference)
    with pytest.raises(ValueError, match="score"):
        info = [{"label_id": s["label_id"]} for s in prediction["segments_info"]]
        metric.add(prediction={"segmentation": prediction["segmentation"], "segments_info": info}, reference=reference)
    with pytest.raises(ValueError, match="only 0 and 1"):
        probabilities = prediction["segmentation"] * 0.7
        metric.add(
            prediction={"segmentation": probabilities, "segments_info": prediction["segments_info"]},
            reference=reference,
        )
    with pytest.raises(ValueError, match=r"Reference ids \[1\] occur"):
        unlisted = {"segmentation": reference["segmentation"], "segments_info": reference["segments_info"][1:]}
        metric.add(prediction=prediction, reference=unlisted)
    # the failed calls kept nothing: the metric now gives the result of the valid example alone
    metric.add(prediction=prediction, reference=reference)
    ours = metric.compute(thing_ids=AP_THING_IDS)
    stats, per_category = cocoeval_results(tmp_path, [(prediction, reference)], AP_THING_IDS)
    assert_ap_equal(ours, stats, per_category)


# ----------------------------------------------------------------------------------------------------------------
# evaluate.load
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, metric_class",
    [("mean_iou", MeanIoU), ("panoptic_quality", PanopticQuality), ("mask_ap", MaskAP)],
)
def test_evaluate_load_from_path(script, metric_class):
    assert type(evaluate.load(str(METRIC_SCRIPTS / script))) is metric_class
    assert type(evaluate.load(str(METRIC_SCRIPTS / script / f"{script}.py"))) is metric_class


# ----------------------------------------------------------------------------------------------------------------
# Statistics of several processes, merged
# ----------------------------------------------------------------------------------------------------------------


def exactly_equal(first, second) -> bool:
    """Equal results, NaN equal to NaN, floats to the last bit."""
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(exactly_equal(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple, np.ndarray)):
        return len(first) == len(second) and all(exactly_equal(a, b) for a, b in zip(first, second))
    return (
        (math.isnan(first) and math.isnan(second))
        if isinstance(first, float) and math.isnan(first)
        else first == second
    )


@pytest.mark.parametrize("num_processes", [2, 3])
def test_merged_states_of_uneven_shards_equal_one_process(num_processes):
    """Each metric fed an interleaved share of the cases per "process" (uneven: 7 or 8 cases), then merged: exactly
    the one-process results (PQ's IoU sums and AP's score ties included), whatever the order of the states."""
    rng = np.random.default_rng(10 + num_processes)
    semantic = [semantic_case(rng, "random") for _ in range(7)]
    panoptic = [panoptic_case(rng, empty_prediction=index == 3) for index in range(7)] + [boundary_panoptic_case()]
    instance = [instance_case(rng) for _ in range(6)] + [instance_case(rng, no_detections=True)]
    for metric_class, cases, kwargs in (
        (MeanIoU, [(p, ID_TO_TRAIN_ID[labels]) for labels, p in semantic], {"num_labels": 19, "ignore_index": 255}),
        (PanopticQuality, panoptic, {"thing_ids": THING_IDS, "stuff_ids": STUFF_IDS}),
        (MaskAP, instance, {"thing_ids": AP_THING_IDS}),
    ):
        one = metric_class()
        for prediction, reference in cases:
            one.add(prediction=prediction, reference=reference)
        expected = one.compute(**kwargs)
        shards = [list(range(rank, len(cases), num_processes)) for rank in range(num_processes)]
        states = []
        for keys in shards:
            part = metric_class()
            for index in keys:
                part.add(prediction=cases[index][0], reference=cases[index][1])
            states.append(part.state())
        merged = metric_class()
        merged.merge_states(states[::-1], shards[::-1])
        assert len(merged) == len(cases)
        assert exactly_equal(merged.compute(**kwargs), expected), metric_class.__name__
    with pytest.raises(ValueError, match="same key"):
        MeanIoU().merge_states([states[0], states[0]], [shards[0], shards[0]])
