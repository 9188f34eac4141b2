"""Post-processing of PEMImageProcessor against the official PEM inference and an independent reference."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from transformers_pem import label_maps_pem, post_processing_pem
from transformers_pem.image_processing_pem import PEMImageProcessor
from transformers_pem.image_processing_pem_pil import PEMImageProcessorPil
from transformers_pem.labels_pem import CITYSCAPES_LABELS
from transformers_pem.visualization.segmentation import PALETTES, draw_segmentation

FIXTURES = Path(__file__).parent / "fixtures" / "postprocess"
CITYSCAPES_THINGS = [index for index, label in enumerate(CITYSCAPES_LABELS) if label[2]]


@pytest.fixture(scope="module")
def official():
    return load_file(FIXTURES / "official.safetensors"), json.loads((FIXTURES / "official.json").read_text())


def outputs(class_logits, mask_logits, pixel_mask=None):
    """A stand-in for PEMForUniversalSegmentationOutput (post-processing only reads these attributes)."""
    fields = {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits}
    if pixel_mask is not None:
        fields["pixel_mask"] = pixel_mask
    return SimpleNamespace(**fields)


def official_pixel_mask(sizes, padded_size):
    mask = torch.zeros(len(sizes), *padded_size, dtype=torch.int64)
    for index, (height, width) in enumerate(sizes):
        mask[index, :height, :width] = 1
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference (numpy, float64): written from the official description, not from the processor's code.
# ---------------------------------------------------------------------------------------------------------------------


def bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, h, w) bilinear resize with PyTorch's `align_corners=False` convention (no antialiasing)."""

    def sample(n_in, n_out):
        source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), source - low

    y0, y1, wy = sample(maps.shape[1], size[0])
    x0, x1, wx = sample(maps.shape[2], size[1])
    rows = maps[:, y0] * (1 - wy)[None, :, None] + maps[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference_masks(mask_logits, padded_size, valid_size, output_size):
    """Upsample to the padded input, crop the image's region, resize to the output size."""
    masks = bilinear(mask_logits.astype(np.float64), padded_size)[:, : valid_size[0], : valid_size[1]]
    return bilinear(masks, output_size)


def reference_semantic(class_logits, mask_logits, padded_size, valid_size, output_size, resize_first):
    probs = softmax(class_logits.astype(np.float64))[:, :-1]
    if resize_first:
        masks = sigmoid(reference_masks(mask_logits, padded_size, valid_size, output_size))
        return sum(probs[q][:, None, None] * masks[q][None] for q in range(len(probs)))
    masks = sigmoid(bilinear(mask_logits.astype(np.float64), padded_size))
    scores = sum(probs[q][:, None, None] * masks[q][None] for q in range(len(probs)))
    return bilinear(scores[:, : valid_size[0], : valid_size[1]], output_size)


def reference_panoptic(class_logits, masks, thing_ids, threshold=0.8, overlap=0.8, mask_threshold=0.5):
    """masks: (Q, H, W) mask logits at the output size. Returns (segmentation, [(id, label, is_thing)])."""
    probs = softmax(class_logits.astype(np.float64))
    num_labels = probs.shape[1] - 1
    kept = [q for q in range(len(probs)) if probs[q].argmax() != num_labels and probs[q].max() > threshold]
    segmentation = np.zeros(masks.shape[1:], dtype=np.int64)
    segments, stuff_ids = [], {}
    if not kept:
        return segmentation, segments
    mask_probs = sigmoid(masks.astype(np.float64))
    weighted = np.stack([probs[q].max() * mask_probs[q] for q in kept])
    winner = weighted.argmax(0)
    for k, q in enumerate(kept):
        label = int(probs[q].argmax())
        region = (winner == k) & (mask_probs[q] >= mask_threshold)
        area, own_area = int((winner == k).sum()), int((mask_probs[q] >= mask_threshold).sum())
        if area == 0 or own_area == 0 or not region.any() or area / own_area < overlap:
            continue
        if label not in thing_ids and label in stuff_ids:
            segmentation[region] = stuff_ids[label]
            continue
        segment_id = len(segments) + 1
        segmentation[region] = segment_id
        segments.append((segment_id, label, label in thing_ids))
        if label not in thing_ids:
            stuff_ids[label] = segment_id
    return segmentation, segments


def reference_rle(mask):
    """Mask2Former's run-length encoding, run by run: 1-based start and length of each run of ones."""
    flat, runs, start = np.asarray(mask).flatten(), [], None
    for index, value in enumerate([*flat, False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs += [start + 1, index - start]
            start = None
    return runs


def reference_instances(class_logits, masks, thing_ids, top_k=100, mask_threshold=0.5):
    """masks: (Q, H, W) mask logits at the output size. Returns [(score, label, binary mask)] by decreasing score."""
    probs = softmax(class_logits.astype(np.float64))[:, :-1]
    pairs = sorted(((probs[q, c], q, c) for q in range(probs.shape[0]) for c in range(probs.shape[1])), reverse=True)
    instances = []
    for class_prob, q, c in pairs[:top_k]:
        if c not in thing_ids:
            continue
        binary = sigmoid(masks[q].astype(np.float64)) > mask_threshold
        mask_score = (sigmoid(masks[q].astype(np.float64)) * binary).sum() / (binary.sum() + 1e-6)
        instances.append((class_prob * mask_score, c, binary))
    return sorted(instances, key=lambda instance: -instance[0])


def reference_instance_map(instances, size):
    """The id map of [(score, label, binary mask)] by decreasing score: per pixel, the best instance covering it
    (-1: none)."""
    expected = np.full(size, -1)
    for index in reversed(range(len(instances))):
        expected[instances[index][2]] = index
    return expected


def random_outputs(seed, batch_size=2, num_queries=6, num_labels=5, mask_size=(8, 10), sharp=3.0):
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch_size, num_queries, num_labels + 1, generator=generator) * sharp
    mask_logits = torch.randn(batch_size, num_queries, *mask_size, generator=generator) * 4
    return class_logits, mask_logits


# ---------------------------------------------------------------------------------------------------------------------
# Official reference outputs (tests/fixtures/postprocess/make_fixtures.py says which)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixel_mask_via", ["argument", "outputs"])
def test_semantic_config_matches_official(official, pixel_mask_via):
    tensors, meta = official
    meta = meta["semantic"]
    pixel_mask = official_pixel_mask(meta["image_sizes"], meta["padded_size"])
    processor = PEMImageProcessor.from_preset("pem-stdc1-cityscapes-semantic")
    for sizes, key, step in (
        (meta["output_sizes"], "sem_seg", 4),
        (meta["resized_output_sizes"], "sem_seg_resized", 2),
    ):
        if pixel_mask_via == "argument":
            model_outputs = outputs(tensors["semantic.pred_logits"], tensors["semantic.pred_masks"])
            kwargs = {"pixel_mask": pixel_mask}
        else:
            model_outputs = outputs(tensors["semantic.pred_logits"], tensors["semantic.pred_masks"], pixel_mask)
            kwargs = {}
        results = processor.post_process_semantic_segmentation(
            model_outputs, target_sizes=sizes, return_segmentation_scores=True, **kwargs
        )
        for b, result in enumerate(results):
            assert result.segmentation.shape == tuple(sizes[b])
            scores = result.segmentation_scores
            torch.testing.assert_close(
                scores[:, ::step, ::step], tensors[f"semantic.{key}.{b}.every{step}"], atol=3e-4, rtol=0
            )
            top2 = scores.topk(2, dim=0).values
            certain = (top2[0] - top2[1]) > 1e-4
            expected = tensors[f"semantic.{key}.{b}.argmax"].long()
            assert torch.equal(result.segmentation[certain], expected[certain])


def test_panoptic_config_semantic_matches_official(official):
    tensors, meta = official
    meta = meta["panoptic"]
    processor = PEMImageProcessor.from_preset("pem-stdc2-cityscapes-panoptic")
    assert processor.resize_masks_before_semantic_inference  # the official order of panoptic configs
    model_outputs = outputs(tensors["panoptic.pred_logits"], tensors["panoptic.pred_masks"])
    results = processor.post_process_semantic_segmentation(
        model_outputs,
        target_sizes=meta["output_sizes"],
        return_segmentation_scores=True,
        pixel_mask=tensors["panoptic.pixel_mask"],
    )
    for b, result in enumerate(results):
        scores = result.segmentation_scores
        torch.testing.assert_close(scores[:, ::4, ::4], tensors[f"panoptic.sem_seg.{b}.every4"], atol=3e-4, rtol=0)
        top2 = scores.topk(2, dim=0).values
        certain = (top2[0] - top2[1]) > 1e-4
        assert torch.equal(result.segmentation[certain], tensors[f"panoptic.sem_seg.{b}.argmax"].long()[certain])


@pytest.mark.parametrize("processor_class", [PEMImageProcessor, PEMImageProcessorPil])
def test_panoptic_matches_official(official, processor_class):
    tensors, meta = official
    meta = meta["panoptic"]
    processor = processor_class.from_preset("pem-stdc2-cityscapes-panoptic")
    assert processor.thing_ids == meta["thing_ids"]
    model_outputs = outputs(
        tensors["panoptic.pred_logits"], tensors["panoptic.pred_masks"], tensors["panoptic.pixel_mask"]
    )
    # Defaults = official OBJECT_MASK_THRESHOLD 0.8, OVERLAP_THRESHOLD 0.8, stuff classes fused.
    results = processor.post_process_panoptic_segmentation(model_outputs, target_sizes=meta["output_sizes"])
    for b, result in enumerate(results):
        segmentation = result["segmentation"]
        assert segmentation.dtype == torch.int32 and segmentation.shape == tuple(meta["output_sizes"][b])
        certain = tensors[f"panoptic.panoptic_uncertain.{b}"] == 0
        assert torch.equal(segmentation[certain].long(), tensors[f"panoptic.panoptic_seg.{b}"][certain].long())
        converted = [
            {"id": s["id"], "isthing": s["label_id"] in meta["thing_ids"], "category_id": s["label_id"]}
            for s in result["segments_info"]
        ]
        assert converted == meta["segments_info"][b]
        for segment in result["segments_info"]:
            assert type(segment["id"]) is int and type(segment["label_id"]) is int
            assert segment["was_fused"] is (segment["label_id"] not in meta["thing_ids"])
            assert isinstance(segment["score"], float) and segment["score"] > 0.8


def test_instances_match_official(official):
    tensors, meta = official
    meta = meta["panoptic"]
    processor = PEMImageProcessor.from_preset("pem-stdc2-cityscapes-panoptic")
    model_outputs = outputs(
        tensors["panoptic.pred_logits"], tensors["panoptic.pred_masks"], tensors["panoptic.pixel_mask"]
    )
    results = processor.post_process_instance_segmentation(
        model_outputs, target_sizes=meta["output_sizes"], return_binary_maps=True
    )
    for b, result in enumerate(results):
        height, width = meta["output_sizes"][b]
        count = meta["num_instances"][b]
        expected_masks = np.unpackbits(tensors[f"panoptic.instances.{b}.pred_masks_packed"].numpy())
        expected_masks = torch.from_numpy(expected_masks[: count * height * width].reshape(count, height, width) > 0)
        expected_scores = tensors[f"panoptic.instances.{b}.scores"]
        expected_classes = tensors[f"panoptic.instances.{b}.pred_classes"]
        assert len(result["segments_info"]) == count and result["segmentation"].shape == (count, height, width)

        # Official order is torch.topk(sorted=False); ours is by decreasing score: compare by score order.
        order = expected_scores.argsort(descending=True)
        scores = torch.tensor([s["score"] for s in result["segments_info"]])
        assert torch.all(scores[:-1] >= scores[1:])
        torch.testing.assert_close(scores, expected_scores[order], atol=1e-4, rtol=0)
        assert [s["label_id"] for s in result["segments_info"]] == expected_classes[order].tolist()
        assert all(s["label_id"] in meta["thing_ids"] and s["was_fused"] is False for s in result["segments_info"])

        # Mask pixels may differ only where the mask logit is within 1e-3 of 0 (README §10).
        mask_logits = reference_masks(
            tensors["panoptic.pred_masks"][b].numpy(), meta["padded_size"], meta["image_sizes"][b], (height, width)
        )
        queries = tensors[f"panoptic.instances.{b}.query_index"][order]
        for ours, official_mask, query in zip(result["segmentation"], expected_masks[order], queries):
            differ = (ours != official_mask).numpy()
            assert np.all(np.abs(mask_logits[query][differ]) < 1e-3)


def test_official_image_sizes_come_from_the_pixel_mask(official):
    """Without target sizes, results have the processed (unpadded) size of each image, not the padded or 384x384."""
    tensors, meta = official
    model_outputs = outputs(
        tensors["panoptic.pred_logits"], tensors["panoptic.pred_masks"], tensors["panoptic.pixel_mask"]
    )
    processor = PEMImageProcessor.from_preset("pem-stdc2-cityscapes-panoptic")
    image_sizes = [tuple(size) for size in meta["panoptic"]["image_sizes"]]
    assert [tuple(r.shape) for r in processor.post_process_semantic_segmentation(model_outputs)] == image_sizes
    panoptic = processor.post_process_panoptic_segmentation(model_outputs)
    assert [tuple(r["segmentation"].shape) for r in panoptic] == image_sizes
    instances = processor.post_process_instance_segmentation(model_outputs)
    assert [tuple(r["segmentation"].shape) for r in instances] == image_sizes
    # Without any padding information the whole (padded) input is the image.
    unpadded = outputs(tensors["panoptic.pred_logits"], tensors["panoptic.pred_masks"])
    assert processor.post_process_semantic_segmentation(unpadded)[0].shape == tuple(meta["panoptic"]["padded_size"])


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference on random outputs: mixed-size batches, padding, target sizes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resize_first", [False, True])
def test_semantic_matches_reference_on_a_mixed_size_batch(resize_first):
    class_logits, mask_logits = random_outputs(0, mask_size=(8, 10))
    padded_size, valid_sizes, target_sizes = (32, 40), [(32, 27), (21, 40)], [(45, 30), (10, 17)]
    pixel_mask = official_pixel_mask(valid_sizes, padded_size)
    processor = PEMImageProcessor(resize_masks_before_semantic_inference=resize_first)
    results = processor.post_process_semantic_segmentation(
        outputs(class_logits, mask_logits),
        target_sizes=target_sizes,
        return_segmentation_scores=True,
        pixel_mask=pixel_mask,
    )
    for b, result in enumerate(results):
        expected = reference_semantic(
            class_logits[b].numpy(), mask_logits[b].numpy(), padded_size, valid_sizes[b], target_sizes[b], resize_first
        )
        np.testing.assert_allclose(result.segmentation_scores.numpy(), expected, atol=1e-5)
        assert torch.equal(result.segmentation, torch.from_numpy(expected.argmax(0)))

    # The padding matters: resizing the whole padded map (Mask2Former's behaviour) gives different scores.
    ignoring_padding = reference_semantic(
        class_logits[1].numpy(), mask_logits[1].numpy(), padded_size, padded_size, target_sizes[1], resize_first
    )
    assert np.abs(results[1].segmentation_scores.numpy() - ignoring_padding).max() > 1e-2


@pytest.mark.parametrize(("mask_size", "size"), [((13, 9), (52, 36)), ((13, 9), (104, 45)), ((13, 9), (39, 27))])
def test_semantic_scores_in_bands_equal_the_full_maps(monkeypatch, mask_size, size):
    """The semantic scores are computed a band of rows at a time (vertical factors 4 and 8); they must equal the scores
    of the full upsampled masks up to the last bit of PyTorch's resize kernel. A factor of 3 takes the unbanded path.
    A band edge off by one row would move scores by ~1e-2."""
    generator = torch.Generator().manual_seed(size[0])
    mask_logits = torch.randn(6, *mask_size, generator=generator) * 4
    class_probs = torch.randn(6, 5, generator=generator).softmax(dim=-1)[:, :-1]
    masks = torch.nn.functional.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0]
    expected = torch.einsum("qc,qhw->chw", class_probs, masks.sigmoid())
    # 2 rows of mask logits per band: 7 bands, the last one a single row.
    factor = size[0] // mask_size[0]
    monkeypatch.setattr(label_maps_pem, "SEMANTIC_BAND_ELEMENTS", 2 * 6 * factor * size[1])
    scores = label_maps_pem.semantic_scores(class_probs, mask_logits, size)
    assert scores.shape == (4, *size)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    assert torch.equal(scores.max(dim=0).indices, expected.max(dim=0).indices)


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_post_processing_of_outputs_that_require_grad(task):
    """Outputs of a forward pass run without `torch.no_grad()` carry gradients; post-processing must accept them (it
    runs without gradient tracking) and give the results of the detached outputs."""
    class_logits, mask_logits = random_outputs(4)
    processor = PEMImageProcessor(thing_ids=[2, 3])
    post_process = getattr(processor, f"post_process_{task}_segmentation")
    tracked = post_process(
        outputs(class_logits.requires_grad_(), mask_logits.requires_grad_()), target_sizes=[(32, 40)] * 2
    )
    plain = post_process(outputs(class_logits.detach(), mask_logits.detach()), target_sizes=[(32, 40)] * 2)
    for tracked_result, plain_result in zip(tracked, plain):
        if task == "semantic":
            assert not tracked_result.requires_grad and torch.equal(tracked_result, plain_result)
        else:
            assert torch.equal(tracked_result["segmentation"], plain_result["segmentation"])
            assert tracked_result["segments_info"] == plain_result["segments_info"]


def one_query_at_a_time(monkeypatch):
    """Make post-processing hold the output-size masks of one query at a time, as for a very large output."""
    monkeypatch.setattr(label_maps_pem, "FULL_MAP_ELEMENTS", 1)
    monkeypatch.setattr(post_processing_pem, "FULL_MAP_ELEMENTS", 1)


@pytest.mark.parametrize("path", ["mask resolution", "full maps", "full maps, one query at a time"])
# With mask_threshold 0 every mask covers the image: a query keeps a segment where it wins a tenth of it.
@pytest.mark.parametrize(
    "seed, mask_threshold, overlap", [(1, 0.5, 0.5), (2, 0.5, 0.5), (3, 0.5, 0.5), (1, 0.0, 0.1), (2, 0.3, 0.5)]
)
def test_panoptic_matches_reference(monkeypatch, seed, mask_threshold, overlap, path):
    if path != "mask resolution":
        monkeypatch.setattr(post_processing_pem, "panoptic_maps", lambda *args: None)
    if path.endswith("one query at a time"):
        one_query_at_a_time(monkeypatch)
    class_logits, mask_logits = random_outputs(seed, num_queries=8, num_labels=4, sharp=4.0)
    padded_size, valid_sizes, target_sizes = (32, 40), [(30, 40), (32, 25)], [(30, 40), (48, 37)]
    thing_ids = [2, 3]
    processor = PEMImageProcessor(thing_ids=thing_ids)
    results = processor.post_process_panoptic_segmentation(
        outputs(class_logits, mask_logits, official_pixel_mask(valid_sizes, padded_size)),
        threshold=0.5,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap,
        target_sizes=target_sizes,
    )
    num_segments = 0
    for b, result in enumerate(results):
        masks = reference_masks(mask_logits[b].numpy(), padded_size, valid_sizes[b], target_sizes[b])
        expected_segmentation, expected_segments = reference_panoptic(
            class_logits[b].numpy(), masks, thing_ids, threshold=0.5, overlap=overlap, mask_threshold=mask_threshold
        )
        assert np.array_equal(result["segmentation"].numpy(), expected_segmentation)
        segments = [(s["id"], s["label_id"], not s["was_fused"]) for s in result["segments_info"]]
        assert segments == expected_segments
        num_segments += len(segments)
    assert num_segments >= 3  # the seeds produce real segments


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["all queries", "one query at a time"])
@pytest.mark.parametrize("seed, mask_threshold", [(4, 0.5), (5, 0.5), (4, 0.0), (5, 0.7)])
def test_instances_match_reference(monkeypatch, seed, mask_threshold, one_at_a_time):
    if one_at_a_time:
        one_query_at_a_time(monkeypatch)
    class_logits, mask_logits = random_outputs(seed, num_queries=5, num_labels=4)
    padded_size, valid_sizes, target_sizes = (32, 40), [(32, 33), (25, 40)], [(20, 22), (50, 80)]
    thing_ids = [0, 2, 3]
    processor = PEMImageProcessor(thing_ids=thing_ids, test_topk_per_image=12)
    model_outputs = outputs(class_logits, mask_logits, official_pixel_mask(valid_sizes, padded_size))
    settings = {"target_sizes": target_sizes, "mask_threshold": mask_threshold}
    maps = processor.post_process_instance_segmentation(model_outputs, return_binary_maps=True, **settings)
    id_maps = processor.post_process_instance_segmentation(model_outputs, **settings)
    encodings = processor.post_process_instance_segmentation(model_outputs, return_coco_annotation=True, **settings)
    for b in range(2):
        masks = reference_masks(mask_logits[b].numpy(), padded_size, valid_sizes[b], target_sizes[b])
        expected = reference_instances(class_logits[b].numpy(), masks, thing_ids, 12, mask_threshold)
        info = maps[b]["segments_info"]
        assert [s["id"] for s in info] == list(range(len(expected)))
        assert [s["label_id"] for s in info] == [label for _, label, _ in expected]
        np.testing.assert_allclose([s["score"] for s in info], [score for score, _, _ in expected], atol=1e-5)
        assert np.array_equal(maps[b]["segmentation"].numpy(), np.stack([mask for _, _, mask in expected]))
        assert encodings[b]["segments_info"] == info
        assert encodings[b]["segmentation"] == [reference_rle(mask) for _, _, mask in expected]
        assert np.array_equal(id_maps[b]["segmentation"].numpy(), reference_instance_map(expected, target_sizes[b]))


# ---------------------------------------------------------------------------------------------------------------------
# Behaviour and formats (hand-made outputs with known answers)
# ---------------------------------------------------------------------------------------------------------------------


def quadrant_outputs():
    """Four confident queries on the four quadrants of an 8x8 mask grid: two of stuff class 0, two of thing class 1."""
    class_logits = torch.full((1, 5, 3), -10.0)
    class_logits[0, [0, 1], 0] = 10.0  # stuff
    class_logits[0, [2, 3], 1] = 10.0  # things
    class_logits[0, 4, 2] = 10.0  # no object
    mask_logits = torch.full((1, 5, 8, 8), -20.0)
    for query, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                          (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):  # fmt: skip
        mask_logits[0, query, rows, cols] = 20.0
    return outputs(class_logits, mask_logits)


def test_panoptic_fuses_stuff_and_separates_things():
    processor = PEMImageProcessor(thing_ids=[1])
    result = processor.post_process_panoptic_segmentation(quadrant_outputs(), target_sizes=[(8, 8)])[0]
    expected = torch.tensor([[1, 1], [2, 3]], dtype=torch.int32).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(result["segmentation"], expected)
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in result["segments_info"]] == [
        (1, 0, True),
        (2, 1, False),
        (3, 1, False),
    ]
    # An explicit label_ids_to_fuse overrides the default (stuff classes); an empty set fuses nothing.
    result = processor.post_process_panoptic_segmentation(
        quadrant_outputs(), label_ids_to_fuse=set(), target_sizes=[(8, 8)]
    )[0]
    assert [s["id"] for s in result["segments_info"]] == [1, 2, 3, 4]


def test_panoptic_without_kept_queries_is_void():
    class_logits = torch.zeros(1, 3, 4)
    class_logits[..., -1] = 5.0  # every query predicts "no object"
    result = PEMImageProcessor().post_process_panoptic_segmentation(
        outputs(class_logits, torch.randn(1, 3, 4, 4)), target_sizes=[(7, 9)]
    )[0]
    assert result["segments_info"] == [] and torch.equal(result["segmentation"], torch.zeros(7, 9, dtype=torch.int32))


def test_pipeline_keyword_arguments():
    """The image-segmentation pipeline calls post-processing with exactly these keywords."""
    processor = PEMImageProcessor(thing_ids=[1])
    pipeline_kwargs = {
        "threshold": 0.9,
        "mask_threshold": 0.5,
        "overlap_mask_area_threshold": 0.5,
        "target_sizes": [(16, 16)],
    }
    panoptic = processor.post_process_panoptic_segmentation(quadrant_outputs(), **pipeline_kwargs)[0]
    instances = processor.post_process_instance_segmentation(quadrant_outputs(), **pipeline_kwargs)[0]
    semantic = processor.post_process_semantic_segmentation(quadrant_outputs(), target_sizes=[(16, 16)])[0]
    assert len(panoptic["segments_info"]) == 3 and len(instances["segments_info"]) == 2
    assert semantic.dtype == torch.int64
    assert torch.equal(semantic, torch.tensor([[0, 0], [1, 1]]).repeat_interleave(8, 0).repeat_interleave(8, 1))


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64])
def test_binary_mask_to_rle_takes_tensors_and_arrays(dtype):
    mask = np.random.default_rng(0).random((7, 9)) > 0.6
    mask[0, 0] = mask[-1, -1] = True  # runs at both ends of the flattened mask
    expected = reference_rle(mask)
    assert post_processing_pem.binary_mask_to_rle(mask.astype(dtype)) == expected
    assert post_processing_pem.binary_mask_to_rle(torch.from_numpy(mask.astype(dtype))) == expected


def test_instance_formats():
    processor = PEMImageProcessor(thing_ids=[1])
    binary = processor.post_process_instance_segmentation(
        quadrant_outputs(), target_sizes=[(8, 8)], return_binary_maps=True
    )[0]
    rle = processor.post_process_instance_segmentation(
        quadrant_outputs(), target_sizes=[(8, 8)], return_coco_annotation=True
    )[0]
    id_map = processor.post_process_instance_segmentation(quadrant_outputs(), target_sizes=[(8, 8)])[0]
    masks = binary["segmentation"]
    assert masks.dtype == torch.bool and masks.shape == (len(binary["segments_info"]), 8, 8)
    # Only the thing class survives: the two thing queries have the top class scores.
    assert [s["label_id"] for s in binary["segments_info"]][:2] == [1, 1]
    for mask, encoding in zip(masks, rle["segmentation"]):
        decoded = torch.zeros(64, dtype=torch.bool)
        for start, length in zip(encoding[::2], encoding[1::2]):
            decoded[start - 1 : start - 1 + length] = True
        assert torch.equal(decoded.view(8, 8), mask)
    assert id_map["segmentation"].dtype == torch.int32
    assert set(id_map["segmentation"].unique().tolist()) <= {-1, *range(len(masks))}
    high = processor.post_process_instance_segmentation(quadrant_outputs(), threshold=0.5, target_sizes=[(8, 8)])[0]
    assert [s["score"] > 0.5 for s in high["segments_info"]] == [True, True]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, o: p.post_process_semantic_segmentation(o, target_sizes=[(8, 8), (8, 8)]), "target sizes"),
        (lambda p, o: p.post_process_semantic_segmentation(o, target_sizes=[(0, 8)]), "positive"),
        (lambda p, o: p.post_process_semantic_segmentation(o, pixel_mask=torch.ones(2, 32, 32)), "pixel_mask"),
        (lambda p, o: p.post_process_semantic_segmentation(o, pixel_mask=torch.zeros(1, 32, 32)), "no valid pixel"),
        (
            lambda p, o: p.post_process_instance_segmentation(o, return_binary_maps=True, return_coco_annotation=True),
            "both",
        ),
        (lambda p, o: p.post_process_instance_segmentation(o, mask_threshold=1.0), "mask_threshold"),
    ],
)
def test_invalid_post_processing_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(PEMImageProcessor(thing_ids=[1]), quadrant_outputs())


def test_thing_ids_must_fit_the_model():
    with pytest.raises(ValueError, match="thing_ids"):
        PEMImageProcessor.from_preset("pem-r50-ade20k-panoptic").post_process_panoptic_segmentation(quadrant_outputs())


# ---------------------------------------------------------------------------------------------------------------------
# Visualisation
# ---------------------------------------------------------------------------------------------------------------------


def test_semantic_overlay_blends_palette_colours():
    image = np.full((6, 8, 3), 100, dtype=np.uint8)
    segmentation = torch.zeros(6, 8, dtype=torch.int64)
    segmentation[:, 4:] = 13  # car
    segmentation[0, 0] = 255  # ignored: stays uncoloured
    id2label = {i: label[0] for i, label in enumerate(CITYSCAPES_LABELS)}
    drawn = np.asarray(draw_segmentation(image, segmentation, id2label=id2label, palette="cityscapes", alpha=0.5))
    road, car = np.array(PALETTES["cityscapes"][0]), np.array(PALETTES["cityscapes"][13])
    assert np.array_equal(drawn[3, 1], np.round(0.5 * 100 + 0.5 * road))
    assert np.array_equal(drawn[3, 6], np.round(0.5 * 100 + 0.5 * car))
    assert np.array_equal(drawn[0, 0], [100, 100, 100])
    # The legend panel (right of the image) shows swatches of both classes.
    assert drawn.shape[1] > 8
    legend_colours = {tuple(pixel) for pixel in drawn[:, 8:].reshape(-1, 3)}
    assert tuple(road) in legend_colours and tuple(car) in legend_colours
    no_legend = draw_segmentation(image, segmentation, palette="cityscapes", show_legend=False)
    assert no_legend.size == (8, 6)


def test_panoptic_overlay_distinguishes_instances():
    processor = PEMImageProcessor(thing_ids=[1])
    result = processor.post_process_panoptic_segmentation(quadrant_outputs(), target_sizes=[(8, 8)])[0]
    drawn = np.asarray(
        draw_segmentation(
            None,
            result["segmentation"],
            result["segments_info"],
            palette=[(200, 0, 0), (0, 0, 200), (0, 200, 0)],
            show_legend=False,
        )
    )
    assert np.array_equal(drawn[0, 0], [200, 0, 0]) and np.array_equal(drawn[0, 7], [200, 0, 0])  # fused stuff
    assert np.array_equal(drawn[7, 0], [0, 0, 200])  # first instance: the class colour
    assert not np.array_equal(drawn[7, 7], drawn[7, 0])  # second instance of the class: another shade


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": np.zeros((5, 5, 3), np.uint8)}, "target_sizes"),
        ({"palette": "coco"}, "Unknown palette"),
        ({"palette": [(0, 0, 0)]}, "colours"),
        ({"segmentation": torch.zeros(2, 8, 8)}, "return_binary_maps"),
    ],
)
def test_overlay_errors(kwargs, message):
    arguments = {"image": None, "segmentation": torch.ones(8, 8, dtype=torch.int64) * 3}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        draw_segmentation(**arguments)


def test_overlay_accepts_pil_images():
    image = PIL.Image.new("RGB", (8, 6), (10, 20, 30))
    drawn = draw_segmentation(image, np.ones((6, 8), dtype=np.int64), palette="ade20k", show_legend=False)
    assert drawn.size == (8, 6) and drawn.mode == "RGB"


# ---------------------------------------------------------------------------------------------------------------------
# Post-processing at mask resolution (decided windows, exact borders) against the full-resolution maps
# ---------------------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmark.workloads import confident_outputs  # noqa: E402


def full_resolution(monkeypatch):
    """Make post-processing take its full-resolution path (the maps of all queries at the output size)."""
    monkeypatch.setattr(post_processing_pem, "semantic_labels", lambda *args: None)
    monkeypatch.setattr(post_processing_pem, "panoptic_maps", lambda *args: None)


# (mask size, padded size, valid size of image 0, target sizes): no resize after the crop, enlarged, reduced, padded.
DECIDED_CASES = [
    ((32, 64), (128, 256), (128, 256), [(128, 256), (128, 256)]),
    ((32, 48), (128, 192), (100, 192), [(150, 213), (128, 192)]),
    ((48, 32), (192, 128), (192, 97), [(61, 50), (333, 222)]),
]


@pytest.mark.parametrize("num_labels", [19, 150])
@pytest.mark.parametrize(("mask_size", "padded_size", "valid_size", "target_sizes"), DECIDED_CASES)
def test_decided_windows_give_the_full_resolution_results(
    monkeypatch, num_labels, mask_size, padded_size, valid_size, target_sizes
):
    """Semantic (both orders) and panoptic results of the mask-resolution path equal those of the full maps, on
    outputs shaped like a trained model's; the fast path is taken (it decides most pixels there)."""
    model_outputs = confident_outputs(2, 16, num_labels, mask_size, seed=num_labels + mask_size[1])
    model_outputs.pixel_mask = official_pixel_mask([valid_size, padded_size], padded_size)
    thing_ids = list(range(0, num_labels, 3))
    fast, full = {}, {}
    for results, patch in ((fast, False), (full, True)):
        with monkeypatch.context() as context:
            if patch:
                full_resolution(context)
            else:  # the fast functions must answer, not fall back
                for name in ("semantic_labels", "panoptic_maps"):
                    function = getattr(post_processing_pem, name)
                    context.setattr(post_processing_pem, name, lambda *a, f=function: _not_none(f(*a)))
            for resize_first in (False, True):
                processor = PEMImageProcessor(resize_masks_before_semantic_inference=resize_first, thing_ids=thing_ids)
                results[resize_first] = processor.post_process_semantic_segmentation(
                    model_outputs, target_sizes=target_sizes
                )
            results["panoptic"] = processor.post_process_panoptic_segmentation(
                model_outputs, target_sizes=target_sizes
            )
    for b in range(2):
        for resize_first in (False, True):
            assert fast[resize_first][b].shape == tuple(target_sizes[b])
            assert torch.equal(fast[resize_first][b], full[resize_first][b])
        assert torch.equal(fast["panoptic"][b]["segmentation"], full["panoptic"][b]["segmentation"])
        assert fast["panoptic"][b]["segments_info"] == full["panoptic"][b]["segments_info"]
        assert len(fast["panoptic"][b]["segments_info"]) >= 4


def _not_none(result):
    assert result is not None, "the mask-resolution path fell back to the full maps"
    return result


@pytest.mark.parametrize("resize_first", [False, True])
def test_decided_semantic_labels_match_the_reference(resize_first):
    """The mask-resolution semantic labels against the independent float64 reference, where it is not near a tie."""
    model_outputs = confident_outputs(1, 12, 7, (10, 14), seed=3)
    padded_size, valid_size, target_size = (40, 56), (37, 50), (61, 45)
    model_outputs.pixel_mask = official_pixel_mask([valid_size], padded_size)
    processor = PEMImageProcessor(resize_masks_before_semantic_inference=resize_first)
    labels = processor.post_process_semantic_segmentation(model_outputs, target_sizes=[target_size])[0]
    expected = reference_semantic(
        model_outputs.class_queries_logits[0].numpy(),
        model_outputs.masks_queries_logits[0].numpy(),
        padded_size,
        valid_size,
        target_size,
        resize_first,
    )
    top2 = np.sort(expected, axis=0)[-2:]
    clear = torch.from_numpy(top2[1] - top2[0] > 1e-5)
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear], torch.from_numpy(expected.argmax(0))[clear])


def test_flat_masks_fall_back_to_the_full_maps():
    """Untrained outputs (no confident class, flat masks) leave most pixels undecided: the full maps are computed."""
    class_logits, mask_logits = random_outputs(7, batch_size=1, num_queries=8, mask_size=(16, 16), sharp=0.1)
    probs = class_logits[0].softmax(-1)[:, :-1]
    mask_logits = mask_logits * 0.01
    assert label_maps_pem.semantic_labels(probs, mask_logits[0], (64, 64), (64, 64), (64, 64), False) is None


@pytest.mark.parametrize("resize_first", [False, True])
def test_flat_masks_too_large_for_full_maps_take_the_exact_path(monkeypatch, resize_first):
    """Where the full maps would not fit in `FULL_MAP_ELEMENTS`, undecided pixels are computed exactly instead, a
    chunk at a time: the labels equal the full maps' ones."""
    class_logits, mask_logits = random_outputs(8, batch_size=1, num_queries=8, mask_size=(16, 12), sharp=0.1)
    model_outputs = outputs(class_logits, mask_logits * 0.05, official_pixel_mask([(60, 48)], (64, 48)))
    processor = PEMImageProcessor(resize_masks_before_semantic_inference=resize_first)
    expected = processor.post_process_semantic_segmentation(model_outputs, target_sizes=[(90, 70)])[0]
    probs = class_logits[0].softmax(-1)[:, :-1]
    arguments = (probs, mask_logits[0] * 0.05, (64, 48), (60, 48), (90, 70), resize_first)
    assert label_maps_pem.semantic_labels(*arguments) is None  # fits: the full maps
    with monkeypatch.context() as context:
        context.setattr(label_maps_pem, "FULL_MAP_ELEMENTS", 90 * 70)  # one map
        context.setattr(label_maps_pem, "SEMANTIC_BAND_ELEMENTS", 8 * 50)  # chunks of 50 pixels
        assert torch.equal(_not_none(label_maps_pem.semantic_labels(*arguments)), expected)
        labels = processor.post_process_semantic_segmentation(model_outputs, target_sizes=[(90, 70)])[0]
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("threshold", [0.0, 0.05])
@pytest.mark.parametrize("seed", [4, 6])
def test_instances_with_empty_queries_match_reference(seed, threshold):
    """A trained model's "no object" queries have masks below the threshold everywhere: post-processing skips their
    resizing (and, above `threshold`, the detections that cannot reach it), with the reference's results."""
    class_logits, mask_logits = random_outputs(seed, num_queries=8, num_labels=4)
    mask_logits[:, 1::2] = -0.5 - mask_logits[:, 1::2].abs()  # half the queries: empty masks at any size
    mask_logits[:, 2, 0, 0] = 0.0005  # a query just above the threshold at one low-resolution pixel only
    padded_size, valid_sizes, target_sizes = (32, 40), [(32, 33), (25, 40)], [(20, 22), (50, 80)]
    thing_ids = [0, 2, 3]
    processor = PEMImageProcessor(thing_ids=thing_ids, test_topk_per_image=20)
    model_outputs = outputs(class_logits, mask_logits, official_pixel_mask(valid_sizes, padded_size))
    settings = {"target_sizes": target_sizes, "threshold": threshold}
    maps = processor.post_process_instance_segmentation(model_outputs, return_binary_maps=True, **settings)
    encodings = processor.post_process_instance_segmentation(model_outputs, return_coco_annotation=True, **settings)
    id_maps = processor.post_process_instance_segmentation(model_outputs, **settings)
    for b in range(2):
        masks = reference_masks(mask_logits[b].numpy(), padded_size, valid_sizes[b], target_sizes[b])
        expected = [e for e in reference_instances(class_logits[b].numpy(), masks, thing_ids, 20) if e[0] >= threshold]
        info = maps[b]["segments_info"]
        scored = [e for e in expected if e[0] > 0]  # score-0 detections (empty masks) tie: their order is free
        assert len(info) == len(expected) and (threshold == 0) == (len(scored) < len(expected))
        assert [s["label_id"] for s in info[: len(scored)]] == [label for _, label, _ in scored]
        np.testing.assert_allclose([s["score"] for s in info], [score for score, _, _ in expected], atol=1e-5)
        segmentation = maps[b]["segmentation"].numpy()
        assert np.array_equal(segmentation[: len(scored)], np.stack([mask for _, _, mask in scored]))
        assert not segmentation[len(scored) :].any()
        assert encodings[b]["segmentation"] == [reference_rle(mask) for mask in segmentation]
        assert np.array_equal(id_maps[b]["segmentation"].numpy(), reference_instance_map(scored, target_sizes[b]))
