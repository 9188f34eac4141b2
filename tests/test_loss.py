"""Tests of the PEM training criterion against the official criterion's reference outputs
(`tests/fixtures/criterion`, described by its meta.json) and against independent brute-force references."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from transformers_pem import loss_pem
from transformers_pem.loss_pem import PEMHungarianMatcher, PEMLoss, sample_point

FIXTURES = Path(__file__).parent / "fixtures" / "criterion"
OUTPUT_NAMES = ["final"] + [f"aux_outputs.{i}" for i in range(6)]
OFFICIAL_LOSS_NAMES = {"loss_cross_entropy": "loss_ce", "loss_mask": "loss_mask", "loss_dice": "loss_dice"}


@pytest.fixture(scope="module")
def criterion_fixture():
    inputs = load_file(FIXTURES / "inputs.safetensors")
    outputs = load_file(FIXTURES / "outputs.safetensors")
    meta = json.loads((FIXTURES / "meta.json").read_text())
    return inputs, outputs, meta


def official_name(name: str) -> str:
    """`loss_cross_entropy_3` -> `loss_ce_3`."""
    for ours, theirs in OFFICIAL_LOSS_NAMES.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise KeyError(name)


def fixture_arguments(inputs, mask_dtype=torch.bool):
    """Leaf copies of the fixture predictions, plus the targets, as PEMLoss.forward arguments."""
    masks = inputs["pred_masks"].clone().requires_grad_()
    logits = inputs["pred_logits"].clone().requires_grad_()
    auxiliary = [
        {
            "masks_queries_logits": inputs[f"aux_outputs.{i}.pred_masks"].clone().requires_grad_(),
            "class_queries_logits": inputs[f"aux_outputs.{i}.pred_logits"].clone().requires_grad_(),
        }
        for i in range(6)
    ]
    mask_labels = [inputs[f"targets.{b}.masks"].to(mask_dtype) for b in range(2)]
    class_labels = [inputs[f"targets.{b}.labels"] for b in range(2)]
    return masks, logits, mask_labels, class_labels, auxiliary


def fixture_criterion(meta) -> PEMLoss:
    generation = meta["generation"]
    return PEMLoss(
        num_labels=generation["num_classes"],
        no_object_weight=generation["no_object_weight"],
        class_weight=generation["class_weight"],
        mask_weight=generation["mask_weight"],
        dice_weight=generation["dice_weight"],
        train_num_points=generation["train_num_points"],
        oversample_ratio=generation["oversample_ratio"],
        importance_sample_ratio=generation["importance_sample_ratio"],
    )


def test_criterion_reproduces_official(criterion_fixture, monkeypatch):
    inputs, outputs, meta = criterion_fixture
    criterion = fixture_criterion(meta)
    masks, logits, mask_labels, class_labels, auxiliary = fixture_arguments(inputs)

    # Record every random draw, every matching and every set of loss points, without changing them.
    rand_draws = []
    real_rand = torch.rand

    def recording_rand(*args, **kwargs):
        values = real_rand(*args, **kwargs)
        rand_draws.append(values.clone())
        return values

    matches = []
    real_matcher_forward = criterion.matcher.forward

    def recording_matcher_forward(*args, **kwargs):
        indices = real_matcher_forward(*args, **kwargs)
        matches.append(indices)
        return indices

    loss_points = []
    real_sample_uncertain_points = loss_pem.sample_uncertain_points

    def recording_sample_uncertain_points(*args, **kwargs):
        points = real_sample_uncertain_points(*args, **kwargs)
        loss_points.append(points.clone())
        return points

    monkeypatch.setattr(torch, "rand", recording_rand)
    monkeypatch.setattr(criterion.matcher, "forward", recording_matcher_forward)
    monkeypatch.setattr(loss_pem, "sample_uncertain_points", recording_sample_uncertain_points)

    torch.manual_seed(meta["rng_seed"])
    losses = criterion(masks, logits, mask_labels, class_labels, auxiliary)
    total = criterion.weighted_sum(losses)
    total.backward()
    monkeypatch.undo()

    # The same 28 torch.rand calls, in the same order and with the same shapes.
    assert [list(draw.shape) for draw in rand_draws] == [call["shape"] for call in meta["rand_calls"]]
    matcher_draws = [draw for draw in rand_draws if draw.shape[0] == 1]
    expected_matcher_draws = [outputs[f"matcher_point_coords.{name}.{b}"] for name in OUTPUT_NAMES for b in range(2)]
    assert len(matcher_draws) == len(expected_matcher_draws) == 14
    for draw, expected in zip(matcher_draws, expected_matcher_draws):
        torch.testing.assert_close(draw, expected, rtol=0, atol=0)

    # Matches, exactly.
    assert len(matches) == len(OUTPUT_NAMES)
    for name, indices in zip(OUTPUT_NAMES, matches):
        for b, (pred_indices, target_indices) in enumerate(indices):
            assert pred_indices.dtype == target_indices.dtype == torch.int64
            assert torch.equal(pred_indices, outputs[f"matches.{name}.{b}.pred_indices"])
            assert torch.equal(target_indices, outputs[f"matches.{name}.{b}.target_indices"])
            assert pred_indices.tolist() == meta["matches"][name][b]["pred_indices"]

    # Points of the mask losses (768 most uncertain + 256 random per matched mask).
    assert len(loss_points) == len(OUTPUT_NAMES)
    for name, points in zip(OUTPUT_NAMES, loss_points):
        torch.testing.assert_close(points, outputs[f"loss_point_coords.{name}"], rtol=0, atol=0)

    # The 21 unweighted losses, in the official order, and the weighted total.
    assert [official_name(name) for name in losses] == list(meta["losses_unweighted"])
    for name, loss in losses.items():
        assert loss.dtype == torch.float32 and loss.dim() == 0
        torch.testing.assert_close(loss, outputs[f"losses.{official_name(name)}"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(total, outputs["loss_total_weighted"], rtol=1e-6, atol=0)
    assert abs(total.item() - meta["loss_total_weighted"]) < 1e-4

    # Gradients of the weighted total.
    torch.testing.assert_close(logits.grad, outputs["grad.pred_logits"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(masks.grad, outputs["grad.pred_masks"], rtol=1e-5, atol=1e-8)
    for i in range(6):
        torch.testing.assert_close(
            auxiliary[i]["class_queries_logits"].grad,
            outputs[f"grad.aux_outputs.{i}.pred_logits"],
            rtol=1e-5,
            atol=1e-8,
        )


def test_cost_matrices_match_official(criterion_fixture):
    inputs, outputs, meta = criterion_fixture
    matcher = fixture_criterion(meta).matcher
    for name in OUTPUT_NAMES:
        prefix = "" if name == "final" else f"{name}."
        for b in range(2):
            cost = matcher.compute_cost_matrix(
                inputs[f"{prefix}pred_masks"][b],
                inputs[f"{prefix}pred_logits"][b],
                inputs[f"targets.{b}.masks"].bool(),
                inputs[f"targets.{b}.labels"],
                outputs[f"matcher_point_coords.{name}.{b}"],
            )
            expected = outputs[f"cost_matrix.{name}.{b}"]
            assert cost.shape == expected.shape
            torch.testing.assert_close(cost, expected, rtol=1e-6, atol=1e-6)


def test_empty_weight_buffer(criterion_fixture):
    _, _, meta = criterion_fixture
    criterion = fixture_criterion(meta)
    state_dict = criterion.state_dict()
    assert list(state_dict) == ["empty_weight"]
    expected = torch.tensor(meta["empty_weight"], dtype=torch.float32)
    torch.testing.assert_close(state_dict["empty_weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(criterion.expected_empty_weight(), expected, rtol=0, atol=0)

    criterion.empty_weight.zero_()
    criterion.empty_weight.copy_(criterion.expected_empty_weight())
    torch.testing.assert_close(criterion.empty_weight, expected, rtol=0, atol=0)


def bilinear_sample_reference(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear sampling of a (H, W) image at (P, 2) normalised (x, y) points: 0 and 1 are the outer pixel edges,
    pixel centres at (i + 0.5) / size, zero outside."""
    height, width = image.shape
    x = points[:, 0] * width - 0.5
    y = points[:, 1] * height - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    values = np.zeros(len(points))
    for dx, dy in itertools.product((0, 1), (0, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        values[inside] += weight[inside] * image[yi[inside], xi[inside]]
    return values


def test_sample_point_matches_bilinear_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 5, 7, generator=generator, dtype=torch.float64)
    # Include points outside the valid area and exactly on the edges.
    points = torch.rand(2, 50, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    points[:, 0] = torch.tensor([0.0, 0.0])
    points[:, 1] = torch.tensor([1.0, 1.0])
    sampled = sample_point(features, points, align_corners=False)
    assert sampled.shape == (2, 3, 50)
    for n, c in itertools.product(range(2), range(3)):
        expected = bilinear_sample_reference(features[n, c].numpy(), points[n].numpy())
        np.testing.assert_allclose(sampled[n, c].numpy(), expected, rtol=1e-12, atol=1e-12)


def brute_force_costs(pred_masks, pred_logits, target_masks, target_labels, points) -> np.ndarray:
    """Matching cost of every query/target pair, computed pair by pair in float64 with the formulas of §6."""
    logits = pred_logits.double().numpy()
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    points = points[0].double().numpy()
    num_queries, num_targets = pred_masks.shape[0], target_masks.shape[0]
    costs = np.zeros((num_queries, num_targets))
    for q, t in itertools.product(range(num_queries), range(num_targets)):
        x = bilinear_sample_reference(pred_masks[q].double().numpy(), points)
        y = bilinear_sample_reference(target_masks[t].double().numpy(), points)
        bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
        sigmoid = 1 / (1 + np.exp(-x))
        dice = 1 - (2 * np.sum(sigmoid * y) + 1) / (np.sum(sigmoid) + np.sum(y) + 1)
        costs[q, t] = 5 * bce + 2 * -probabilities[q, target_labels[t]] + 5 * dice
    return costs


def brute_force_assignment(costs: np.ndarray) -> dict[int, int]:
    """Cheapest one-to-one assignment ({query: target}) by enumerating all of them."""
    num_queries, num_targets = costs.shape
    best_cost, best = np.inf, None
    if num_targets <= num_queries:
        for queries in itertools.permutations(range(num_queries), num_targets):
            cost = sum(costs[q, t] for t, q in enumerate(queries))
            if cost < best_cost:
                best_cost, best = cost, {q: t for t, q in enumerate(queries)}
    else:
        for targets in itertools.permutations(range(num_targets), num_queries):
            cost = sum(costs[q, t] for q, t in enumerate(targets))
            if cost < best_cost:
                best_cost, best = cost, dict(enumerate(targets))
    return best


@pytest.mark.parametrize("num_queries,num_targets", [(6, 3), (5, 5), (3, 4)])
def test_matcher_matches_brute_force(num_queries, num_targets):
    generator = torch.Generator().manual_seed(100 * num_queries + num_targets)
    batch_size, num_labels, num_points = 2, 7, 64
    masks = 3 * torch.randn(batch_size, num_queries, 6, 9, generator=generator)
    logits = 2 * torch.randn(batch_size, num_queries, num_labels + 1, generator=generator)
    # Targets at twice the prediction resolution.
    mask_labels = [torch.rand(num_targets, 12, 18, generator=generator) > 0.5 for _ in range(batch_size)]
    class_labels = [torch.randint(0, num_labels, (num_targets,), generator=generator) for _ in range(batch_size)]

    # The matcher draws torch.rand(1, num_points, 2) per image: replay them for the reference.
    torch.manual_seed(7)
    points = [torch.rand(1, num_points, 2) for _ in range(batch_size)]
    torch.manual_seed(7)
    indices = PEMHungarianMatcher(num_points=num_points)(masks, logits, mask_labels, class_labels)

    for b, (pred_indices, target_indices) in enumerate(indices):
        assert pred_indices.dtype == target_indices.dtype == torch.int64
        assert len(pred_indices) == min(num_queries, num_targets)
        assert pred_indices.tolist() == sorted(pred_indices.tolist())
        costs = brute_force_costs(masks[b], logits[b], mask_labels[b], class_labels[b], points[b])
        expected = brute_force_assignment(costs)
        assert dict(zip(pred_indices.tolist(), target_indices.tolist())) == expected


def small_batch(num_targets_per_image, num_labels=5, num_queries=4, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    batch_size = len(num_targets_per_image)
    masks = torch.randn(batch_size, num_queries, 8, 8, generator=generator, requires_grad=True)
    logits = torch.randn(batch_size, num_queries, num_labels + 1, generator=generator, requires_grad=True)
    mask_labels = [torch.rand(n, 16, 16, generator=generator) > 0.5 for n in num_targets_per_image]
    class_labels = [torch.randint(0, num_labels, (n,), generator=generator) for n in num_targets_per_image]
    return masks, logits, mask_labels, class_labels


def test_batch_without_targets():
    criterion = PEMLoss(num_labels=5, train_num_points=32)
    masks, logits, mask_labels, class_labels = small_batch([0, 0])
    auxiliary = [{"masks_queries_logits": masks * 2, "class_queries_logits": logits * 2}]

    torch.manual_seed(0)
    losses = criterion(masks, logits, mask_labels, class_labels, auxiliary)
    assert set(losses) == {
        "loss_cross_entropy",
        "loss_mask",
        "loss_dice",
        "loss_cross_entropy_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    for name in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        assert losses[name].item() == 0.0
        assert losses[name].requires_grad
    # Every query is "no object": the weighted mean is the plain mean cross-entropy against the last class.
    expected = -torch.log_softmax(logits.detach(), -1)[..., -1].mean()
    torch.testing.assert_close(losses["loss_cross_entropy"], expected)

    total = criterion.weighted_sum(losses)
    assert torch.isfinite(total)
    total.backward()
    assert masks.grad is not None and torch.count_nonzero(masks.grad) == 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_mask_label_dtypes_give_identical_losses(criterion_fixture):
    inputs, _, meta = criterion_fixture
    criterion = fixture_criterion(meta)
    results = []
    for dtype in (torch.bool, torch.uint8, torch.float32):
        masks, logits, mask_labels, class_labels, auxiliary = fixture_arguments(inputs, mask_dtype=dtype)
        torch.manual_seed(1234)
        losses = criterion(masks, logits, mask_labels, class_labels, auxiliary[:1])
        results.append(torch.stack(list(losses.values())))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=0)


def test_target_masks_sampled_a_chunk_at_a_time_give_identical_losses(criterion_fixture, monkeypatch):
    """Bool targets converted to float one mask at a time (as for images with hundreds of instances) give the losses
    and gradients of all masks at once, bit for bit."""
    from transformers_pem import loss_pem

    inputs, _, meta = criterion_fixture
    criterion = fixture_criterion(meta)
    results = []
    for chunk in (10**9, 1):
        monkeypatch.setattr(loss_pem, "TARGET_MASK_CHUNK", chunk)
        masks, logits, mask_labels, class_labels, auxiliary = fixture_arguments(inputs, mask_dtype=torch.bool)
        masks.requires_grad_(True)
        torch.manual_seed(1234)
        losses = criterion(masks, logits, mask_labels, class_labels, auxiliary)
        criterion.weighted_sum(losses).backward()
        results.append((torch.stack(list(losses.values())), masks.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert loss_pem.sample_target_masks(torch.zeros(0, 4, 4, dtype=torch.bool), torch.rand(1, 5, 2)).shape == (0, 5)


def test_autocast_computes_in_float32(criterion_fixture):
    inputs, _, meta = criterion_fixture
    criterion = fixture_criterion(meta)
    masks, logits, mask_labels, class_labels, auxiliary = fixture_arguments(inputs)

    torch.manual_seed(1234)
    reference = criterion(masks, logits, mask_labels, class_labels, auxiliary[:1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1234)
        autocast_losses = criterion(masks, logits, mask_labels, class_labels, auxiliary[:1])
    for name, loss in autocast_losses.items():
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, reference[name], rtol=0, atol=0)

    # Half-precision predictions give float32 losses close to the float32 ones.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1234)
        bfloat16_losses = criterion(masks.bfloat16(), logits.bfloat16(), mask_labels, class_labels)
    for name, loss in bfloat16_losses.items():
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, reference[name], rtol=2e-2, atol=2e-2)


def test_num_masks_is_averaged_across_processes(monkeypatch):
    criterion = PEMLoss(num_labels=5, train_num_points=32)
    masks, logits, mask_labels, class_labels = small_batch([2, 1])
    torch.manual_seed(0)
    single = criterion(masks, logits, mask_labels, class_labels)

    # Simulate a second process that has 5 target masks: num_masks = (3 + 5) / 2 = 4 instead of 3.
    def all_reduce(tensor):
        tensor += 5

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    torch.manual_seed(0)
    distributed = criterion(masks, logits, mask_labels, class_labels)

    torch.testing.assert_close(distributed["loss_cross_entropy"], single["loss_cross_entropy"], rtol=0, atol=0)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(distributed[name] * 4, single[name] * 3)


def test_weighted_sum_weights():
    criterion = PEMLoss(num_labels=5, class_weight=2.0, mask_weight=5.0, dice_weight=3.0)
    losses = {
        "loss_cross_entropy": torch.tensor(1.0),
        "loss_mask": torch.tensor(10.0),
        "loss_dice": torch.tensor(100.0),
        "loss_cross_entropy_0": torch.tensor(1000.0),
        "loss_dice_11": torch.tensor(10000.0),
    }
    assert criterion.weighted_sum(losses).item() == 2.0 + 50.0 + 300.0 + 2000.0 + 30000.0
    with pytest.raises(ValueError, match="Unknown loss term"):
        criterion.weighted_sum({"loss_bbox": torch.tensor(1.0)})


@pytest.mark.parametrize(
    "case,message",
    [
        ("too_few_mask_labels", "one entry per image"),
        ("class_id_too_large", r"class_labels must be in \[0, 4\]"),
        ("negative_class_id", r"class_labels must be in \[0, 4\]"),
        ("mask_count_mismatch", "one mask per class label"),
        ("float_class_labels", "1-D integer tensor"),
        ("wrong_num_classes", r"num_labels \+ 1"),
        ("bad_auxiliary", "auxiliary_predictions\\[0\\] must be a dict"),
        ("auxiliary_shape_mismatch", "auxiliary prediction 0"),
    ],
)
def test_invalid_inputs_raise(case, message):
    criterion = PEMLoss(num_labels=5, train_num_points=16)
    masks, logits, mask_labels, class_labels = small_batch([2, 1])
    auxiliary = None
    if case == "too_few_mask_labels":
        mask_labels = mask_labels[:1]
    elif case == "class_id_too_large":
        class_labels[1] = torch.tensor([5])
    elif case == "negative_class_id":
        class_labels[0] = torch.tensor([0, -1])
    elif case == "mask_count_mismatch":
        mask_labels[0] = mask_labels[0][:1]
    elif case == "float_class_labels":
        class_labels[0] = class_labels[0].float()
    elif case == "wrong_num_classes":
        logits = logits[..., :-1]
    elif case == "bad_auxiliary":
        auxiliary = [(masks, logits)]
    elif case == "auxiliary_shape_mismatch":
        auxiliary = [{"masks_queries_logits": masks[:, :2], "class_queries_logits": logits}]
    with pytest.raises(ValueError, match=message):
        criterion(masks, logits, mask_labels, class_labels, auxiliary)


def test_invalid_configuration_raises():
    with pytest.raises(ValueError, match="oversample_ratio"):
        PEMLoss(num_labels=5, oversample_ratio=0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        PEMLoss(num_labels=5, importance_sample_ratio=1.5)
    with pytest.raises(ValueError, match="non-zero cost"):
        PEMHungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)


def test_targets_of_different_sizes_are_zero_padded_bottom_right(monkeypatch):
    # The official criterion stacks the targets of a batch into one zero-padded tensor before sampling the loss
    # points, so a smaller target is sampled as if padded at the bottom-right to the largest target size.
    criterion = PEMLoss(num_labels=5, train_num_points=32)
    masks, logits, _, class_labels = small_batch([2, 1])
    generator = torch.Generator().manual_seed(3)
    small = torch.rand(2, 12, 16, generator=generator) > 0.5
    large = torch.rand(1, 16, 20, generator=generator) > 0.5
    padded = torch.zeros(2, 16, 20, dtype=torch.bool)
    padded[:, :12, :16] = small
    fixed_matches = [(torch.tensor([0, 3]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    monkeypatch.setattr(criterion.matcher, "forward", lambda *args: fixed_matches)

    torch.manual_seed(0)
    mixed_sizes = criterion(masks, logits, [small, large], class_labels)
    torch.manual_seed(0)
    pre_padded = criterion(masks, logits, [padded, large], class_labels)
    for name, loss in mixed_sizes.items():
        torch.testing.assert_close(loss, pre_padded[name], rtol=0, atol=0)
