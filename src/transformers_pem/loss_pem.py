"""Training criterion of PEM: Hungarian matching of queries to target masks, then a weighted cross-entropy on the
classes and point-sampled sigmoid cross-entropy and dice losses on the masks (the Mask2Former set criterion).

The computations follow the official PEM criterion step by step, including its random-number sequence, so that the
same seed gives the same matches, the same sampled points and the same losses. Point sampling, the dice losses and
the per-mask sigmoid cross-entropy are transformers' Mask2Former functions (the same operations in the same order).
"""

import contextlib
import re

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    dice_loss,
    pair_wise_dice_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)

# Target masks converted to float at a time when their points are sampled: images with hundreds of instances keep
# their masks as bool, and only this many become float maps at once.
TARGET_MASK_CHUNK = 32


def sample_target_masks(masks: Tensor, point_coordinates: Tensor) -> Tensor:
    """`(num_masks, num_points)` values of `(num_masks, height, width)` target masks (bool, integer or float) at
    `(num_masks, num_points, 2)` points (or `(1, num_points, 2)` for all), bilinearly as `sample_point`, converting
    `TARGET_MASK_CHUNK` masks to float32 at a time (each mask is sampled on its own, so chunking changes nothing)."""
    points = point_coordinates.float().expand(len(masks), -1, -1)
    return torch.cat(
        [
            sample_point(
                masks[start : start + TARGET_MASK_CHUNK, None].float(),
                points[start : start + TARGET_MASK_CHUNK],
                align_corners=False,
            )[:, 0]
            for start in range(0, len(masks), TARGET_MASK_CHUNK)
        ]
        or [points.new_zeros(0, points.shape[1])]
    )


def sample_uncertain_points(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """
    Picks the points where mask logits are most uncertain (closest to 0), plus uniformly random points (detectron2's
    `get_uncertain_point_coords_with_randomness` with uncertainty `-|logit|`).

    Draws `torch.rand(num_masks, int(num_points * oversample_ratio), 2)` candidates, keeps the
    `int(importance_sample_ratio * num_points)` most uncertain per mask, then appends the remaining points from
    `torch.rand(num_masks, num_random, 2)` (only drawn when `num_random > 0`).

    Args:
        mask_logits (`torch.Tensor` of shape `(num_masks, 1, height, width)`):
            Mask logits.
        num_points (`int`):
            Points per mask.
        oversample_ratio (`float`):
            Candidate points per selected point (`>= 1`).
        importance_sample_ratio (`float`):
            Fraction of the points chosen by uncertainty (in `[0, 1]`).

    Returns:
        `torch.Tensor` of shape `(num_masks, num_points, 2)`: `(x, y)` point coordinates in `[0, 1]`.
    """
    num_masks = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_candidates, 2, device=mask_logits.device, dtype=mask_logits.dtype)
    # (num_masks, num_candidates)
    uncertainty = -sample_point(mask_logits, candidates, align_corners=False)[:, 0].abs()

    num_uncertain_points = int(importance_sample_ratio * num_points)
    num_random_points = num_points - num_uncertain_points
    top_indices = torch.topk(uncertainty, k=num_uncertain_points, dim=1).indices
    point_coordinates = torch.gather(candidates, 1, top_indices.unsqueeze(-1).expand(-1, -1, 2))
    if num_random_points > 0:
        random_points = torch.rand(num_masks, num_random_points, 2, device=mask_logits.device, dtype=mask_logits.dtype)
        point_coordinates = torch.cat([point_coordinates, random_points], dim=1)
    return point_coordinates


def pair_wise_sigmoid_cross_entropy_loss(inputs: Tensor, labels: Tensor) -> Tensor:
    """
    Mean binary cross-entropy with logits between every prediction and every target. Mask2Former's function of this
    name divides by the number of points before the products, the official criterion after them: this one keeps the
    official order, so that the matching costs equal the official ones to the bit (Mask2Former's differ by ~5e-7,
    enough to flip a near-tie of the Hungarian matching).

    Args:
        inputs (`torch.Tensor` of shape `(num_queries, num_points)`): mask logits.
        labels (`torch.Tensor` of shape `(num_targets, num_points)`): target values in `[0, 1]`.

    Returns:
        `torch.Tensor` of shape `(num_queries, num_targets)`.
    """
    num_points = inputs.shape[1]
    loss_positive = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    loss_negative = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    loss = torch.einsum("nc,mc->nm", loss_positive, labels) + torch.einsum("nc,mc->nm", loss_negative, 1 - labels)
    return loss / num_points


def _autocast_disabled(device: torch.device):
    """A context that turns autocast off on `device`, so that the criterion computes in float32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class PEMHungarianMatcher(nn.Module):
    """
    One-to-one assignment of queries to the target masks of each image, minimising
    `cost_mask * BCE + cost_class * (-p[class]) + cost_dice * dice` with `scipy.optimize.linear_sum_assignment`.
    Mask costs are computed on `num_points` random points shared by all masks of an image. Unmatched queries are
    supervised as "no object".

    Args:
        cost_class (`float`, *optional*, defaults to 2.0):
            Weight of the classification cost (minus the softmax probability of the target class).
        cost_mask (`float`, *optional*, defaults to 5.0):
            Weight of the sigmoid cross-entropy cost of the masks.
        cost_dice (`float`, *optional*, defaults to 5.0):
            Weight of the dice cost of the masks.
        num_points (`int`, *optional*, defaults to 12544):
            Random points per image on which mask costs are computed.
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("PEMHungarianMatcher needs at least one non-zero cost among cost_class/mask/dice.")
        if num_points < 1:
            raise ValueError(f"num_points must be a positive integer, got {num_points}.")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def compute_cost_matrix(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: Tensor,
        class_labels: Tensor,
        point_coordinates: Tensor,
    ) -> Tensor:
        """
        Matching cost of every query against every target of one image.

        Args:
            masks_queries_logits (`torch.Tensor` of shape `(num_queries, height, width)`): mask logits.
            class_queries_logits (`torch.Tensor` of shape `(num_queries, num_labels + 1)`): class logits.
            mask_labels (`torch.Tensor` of shape `(num_targets, target_height, target_width)`): target masks (any
                resolution; bool, integer or float).
            class_labels (`torch.LongTensor` of shape `(num_targets,)`): target classes.
            point_coordinates (`torch.Tensor` of shape `(1, num_points, 2)`): `(x, y)` points in `[0, 1]`.

        Returns:
            `torch.Tensor` of shape `(num_queries, num_targets)`, float32.
        """
        with _autocast_disabled(masks_queries_logits.device):
            probabilities = class_queries_logits.float().softmax(-1)
            cost_class = -probabilities[:, class_labels]

            pred_masks = masks_queries_logits.float()[:, None]  # (num_queries, 1, height, width)
            points = point_coordinates.to(pred_masks)
            # (num_targets, num_points) and (num_queries, num_points)
            target_points = sample_target_masks(mask_labels.to(pred_masks.device), points)
            pred_points = sample_point(pred_masks, points.expand(pred_masks.shape[0], -1, -1), align_corners=False)[
                :, 0
            ]

            cost_mask = pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
            cost_dice = pair_wise_dice_loss(pred_points, target_points)
            return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        """
        Matches the queries of each image to its targets. Draws `torch.rand(1, num_points, 2)` once per image, also
        for images without targets.

        Args:
            masks_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, height, width)`): mask logits.
            class_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, num_labels + 1)`): class logits.
            mask_labels (`list[torch.Tensor]`): per image, `(num_targets, target_height, target_width)` masks.
            class_labels (`list[torch.LongTensor]`): per image, `(num_targets,)` classes.

        Returns:
            `list[tuple[torch.LongTensor, torch.LongTensor]]`: per image, `(pred_indices, target_indices)` on the CPU,
            of length `min(num_queries, num_targets)`, with `pred_indices` sorted ascending.
        """
        batch_size = masks_queries_logits.shape[0]
        if len(mask_labels) != batch_size or len(class_labels) != batch_size:
            raise ValueError(
                f"Expected one entry of mask_labels and class_labels per image ({batch_size}), got "
                f"{len(mask_labels)} and {len(class_labels)}."
            )
        indices = []
        for image_index in range(batch_size):
            point_coordinates = torch.rand(
                1, self.num_points, 2, device=masks_queries_logits.device, dtype=torch.float32
            )
            cost_matrix = self.compute_cost_matrix(
                masks_queries_logits[image_index],
                class_queries_logits[image_index],
                mask_labels[image_index],
                class_labels[image_index],
                point_coordinates,
            )
            cost_matrix = cost_matrix.cpu().numpy()
            if not np.isfinite(cost_matrix).all():
                raise ValueError(
                    f"The matching cost of image {image_index} contains NaN or infinite values: the predicted logits "
                    "are not finite (check the learning rate and the inputs)."
                )
            pred_indices, target_indices = linear_sum_assignment(cost_matrix)
            indices.append(
                (torch.as_tensor(pred_indices, dtype=torch.int64), torch.as_tensor(target_indices, dtype=torch.int64))
            )
        return indices


class PEMLoss(nn.Module):
    """
    PEM training criterion: Hungarian matching followed by a weighted cross-entropy on the classes and point-sampled
    sigmoid cross-entropy and dice losses on the masks, for the final prediction and every auxiliary prediction.

    Args:
        num_labels (`int`):
            Number of classes, without the "no object" class.
        no_object_weight (`float`, *optional*, defaults to 0.1):
            Cross-entropy weight of the "no object" class (official `NO_OBJECT_WEIGHT`).
        class_weight (`float`, *optional*, defaults to 2.0):
            Matching cost and loss weight of the classification term.
        mask_weight (`float`, *optional*, defaults to 5.0):
            Matching cost and loss weight of the mask sigmoid cross-entropy.
        dice_weight (`float`, *optional*, defaults to 5.0):
            Matching cost and loss weight of the dice loss.
        train_num_points (`int`, *optional*, defaults to 12544):
            Points per mask in the matcher and in the mask losses.
        oversample_ratio (`float`, *optional*, defaults to 3.0):
            Candidate points per selected point in the uncertainty-based point selection.
        importance_sample_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of the loss points chosen by uncertainty; the others are uniformly random.
    """

    def __init__(
        self,
        num_labels: int,
        no_object_weight: float = 0.1,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        train_num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels}.")
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}.")
        if not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}.")
        self.num_labels = num_labels
        self.no_object_weight = no_object_weight
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.weight_dict = {"loss_cross_entropy": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.matcher = PEMHungarianMatcher(
            cost_class=class_weight, cost_mask=mask_weight, cost_dice=dice_weight, num_points=train_num_points
        )
        # Persistent: the official checkpoints store it as `criterion.empty_weight`.
        self.register_buffer("empty_weight", self.expected_empty_weight(), persistent=True)

    def expected_empty_weight(self, device: torch.device | str | None = None) -> Tensor:
        """The value of the `empty_weight` buffer: `[1.0] * num_labels + [no_object_weight]`, float32."""
        empty_weight = torch.ones(self.num_labels + 1, dtype=torch.float32, device=device)
        empty_weight[-1] = self.no_object_weight
        return empty_weight

    def loss_labels(
        self, class_queries_logits: Tensor, class_labels: list[Tensor], indices: list[tuple[Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """Cross-entropy over `num_labels + 1` classes, weighted by `empty_weight`; unmatched queries target the
        "no object" class."""
        logits = class_queries_logits.float()  # (batch_size, num_queries, num_labels + 1)
        batch_indices, query_indices = self._prediction_indices(indices, logits.device)
        matched_classes = torch.cat(
            [labels[target.to(labels.device)] for labels, (_, target) in zip(class_labels, indices)]
        )
        target_classes = torch.full(logits.shape[:2], self.num_labels, dtype=torch.int64, device=logits.device)
        target_classes[batch_indices, query_indices] = matched_classes.to(device=logits.device, dtype=torch.int64)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.empty_weight.float())
        return {"loss_cross_entropy": loss}

    def loss_masks(
        self,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> dict[str, Tensor]:
        """Sigmoid cross-entropy and dice losses of the matched masks, on points chosen by uncertainty. Targets are
        zero-padded bottom-right to the largest target size of the batch (as the official criterion does), then
        sampled at their own resolution."""
        batch_indices, query_indices = self._prediction_indices(indices, masks_queries_logits.device)
        pred_masks = masks_queries_logits[batch_indices, query_indices].float()  # (num_matched, height, width)

        max_height = max(masks.shape[-2] for masks in mask_labels)
        max_width = max(masks.shape[-1] for masks in mask_labels)
        target_masks = torch.cat(
            [
                F.pad(
                    masks[target.to(masks.device)].to(device=pred_masks.device),
                    (0, max_width - masks.shape[-1], 0, max_height - masks.shape[-2]),
                )
                for masks, (_, target) in zip(mask_labels, indices)
            ]
        )  # (num_matched, max_height, max_width), in the targets' dtype

        pred_masks = pred_masks[:, None]
        with torch.no_grad():
            point_coordinates = sample_uncertain_points(
                pred_masks, self.train_num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = sample_target_masks(target_masks, point_coordinates)
        point_logits = sample_point(pred_masks, point_coordinates, align_corners=False)[
            :, 0
        ]  # (num_matched, num_points)
        return {
            "loss_mask": sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def _prediction_losses(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> dict[str, Tensor]:
        return {
            **self.loss_labels(class_queries_logits, class_labels, indices),
            **self.loss_masks(masks_queries_logits, mask_labels, indices, num_masks),
        }

    @staticmethod
    def _prediction_indices(indices: list[tuple[Tensor, Tensor]], device: torch.device) -> tuple[Tensor, Tensor]:
        batch_indices = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(indices)])
        query_indices = torch.cat([pred for pred, _ in indices])
        return batch_indices.to(device), query_indices.to(device)

    @staticmethod
    def get_num_masks(class_labels: list[Tensor], device: torch.device) -> float:
        """Total number of target masks, averaged over processes when torch.distributed is initialised, and
        clamped to at least 1."""
        num_masks = torch.as_tensor([float(sum(len(labels) for labels in class_labels))], device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1).item()

    def _validate_inputs(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        auxiliary_predictions: list[dict[str, Tensor]] | None,
    ) -> None:
        predictions = [(masks_queries_logits, class_queries_logits, "")]
        for i, auxiliary in enumerate(auxiliary_predictions or []):
            if not isinstance(auxiliary, dict) or {"masks_queries_logits", "class_queries_logits"} - auxiliary.keys():
                raise ValueError(
                    f"auxiliary_predictions[{i}] must be a dict with keys 'masks_queries_logits' and "
                    "'class_queries_logits'."
                )
            predictions.append(
                (auxiliary["masks_queries_logits"], auxiliary["class_queries_logits"], f" of auxiliary prediction {i}")
            )
        if class_queries_logits.dim() != 3 or class_queries_logits.shape[0] == 0:
            raise ValueError(
                "class_queries_logits must be a non-empty (batch_size, num_queries, num_labels + 1) tensor, got shape "
                f"{tuple(class_queries_logits.shape)}."
            )
        batch_size, num_queries = class_queries_logits.shape[:2]
        for masks, logits, where in predictions:
            if masks.dim() != 4 or logits.dim() != 3:
                raise ValueError(
                    f"masks_queries_logits{where} must be (batch_size, num_queries, height, width) and "
                    f"class_queries_logits{where} (batch_size, num_queries, num_labels + 1); got shapes "
                    f"{tuple(masks.shape)} and {tuple(logits.shape)}."
                )
            if masks.shape[:2] != (batch_size, num_queries) or logits.shape != (
                batch_size,
                num_queries,
                self.num_labels + 1,
            ):
                raise ValueError(
                    f"Expected masks_queries_logits{where} of shape ({batch_size}, {num_queries}, h, w) and "
                    f"class_queries_logits{where} of shape ({batch_size}, {num_queries}, {self.num_labels + 1}) "
                    f"(num_labels + 1 classes); got {tuple(masks.shape)} and {tuple(logits.shape)}."
                )

        if len(mask_labels) != batch_size or len(class_labels) != batch_size:
            raise ValueError(
                f"mask_labels and class_labels must have one entry per image ({batch_size}), got {len(mask_labels)} "
                f"and {len(class_labels)}."
            )
        for i, (masks, labels) in enumerate(zip(mask_labels, class_labels)):
            if not isinstance(masks, Tensor) or not isinstance(labels, Tensor):
                raise TypeError(f"mask_labels[{i}] and class_labels[{i}] must be torch tensors.")
            if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(
                    f"class_labels[{i}] must be a 1-D integer tensor of class ids, got dtype {labels.dtype} and "
                    f"shape {tuple(labels.shape)}."
                )
            if masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"mask_labels[{i}] must have shape (num_targets, height, width) with one mask per class label; "
                    f"got masks of shape {tuple(masks.shape)} for {labels.shape[0]} class labels."
                )
            if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
                raise ValueError(
                    f"mask_labels[{i}] has NaN or infinite values: the targets must be 0/1 masks (check how they were "
                    "built, e.g. resized or normalised)."
                )
            if masks.numel() and (masks.min() < 0 or masks.max() > 1):
                raise ValueError(
                    f"mask_labels[{i}] must hold values in [0, 1] (1 on the target's pixels); got values in "
                    f"[{masks.min().item()}, {masks.max().item()}]. Convert 0/255 masks with `masks > 0`."
                )
        all_labels = torch.cat([labels.reshape(-1).cpu().long() for labels in class_labels])
        if len(all_labels) > 0 and (all_labels.min() < 0 or all_labels.max() >= self.num_labels):
            raise ValueError(
                f"class_labels must be in [0, {self.num_labels - 1}] (num_labels={self.num_labels}); got values in "
                f"[{all_labels.min().item()}, {all_labels.max().item()}]. Map ignored regions out of the targets "
                "instead of giving them a class id."
            )

    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        auxiliary_predictions: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """
        Computes the unweighted losses.

        Random numbers are drawn in the official order: for the final prediction, then each auxiliary prediction, the
        matcher draws `torch.rand(1, P, 2)` per image, then the mask loss draws `(N, int(P * oversample_ratio), 2)` and
        `(N, P - int(importance_sample_ratio * P), 2)` (`P = train_num_points`, `N` = matched masks in the batch).

        Args:
            masks_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, height, width)`):
                Final mask logits.
            class_queries_logits (`torch.Tensor` of shape `(batch_size, num_queries, num_labels + 1)`):
                Final class logits; the last class is "no object".
            mask_labels (`list[torch.Tensor]`):
                Per image, the `(num_targets, target_height, target_width)` target masks (bool, uint8 or float, any
                resolution; the official training gives them at the padded input size).
            class_labels (`list[torch.LongTensor]`):
                Per image, the `(num_targets,)` class ids, in `[0, num_labels)`.
            auxiliary_predictions (`list[dict[str, torch.Tensor]]`, *optional*):
                Intermediate predictions, each with keys `masks_queries_logits` and `class_queries_logits`. Entry 0 is
                the prediction from the learnable queries before any decoder layer.

        Returns:
            `dict[str, torch.Tensor]`: scalar float32 losses `loss_cross_entropy`, `loss_mask`, `loss_dice`, then
            `loss_cross_entropy_{i}`, `loss_mask_{i}`, `loss_dice_{i}` for auxiliary prediction `i`.
        """
        self._validate_inputs(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels, auxiliary_predictions
        )
        with _autocast_disabled(masks_queries_logits.device):
            indices = self.matcher(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
            # Counted after the first matching, like the official criterion (this keeps its random-number order).
            num_masks = self.get_num_masks(class_labels, masks_queries_logits.device)
            losses = self._prediction_losses(
                masks_queries_logits, class_queries_logits, mask_labels, class_labels, indices, num_masks
            )
            for i, auxiliary in enumerate(auxiliary_predictions or []):
                masks, logits = auxiliary["masks_queries_logits"], auxiliary["class_queries_logits"]
                indices = self.matcher(masks, logits, mask_labels, class_labels)
                auxiliary_losses = self._prediction_losses(
                    masks, logits, mask_labels, class_labels, indices, num_masks
                )
                losses.update({f"{name}_{i}": loss for name, loss in auxiliary_losses.items()})
        return losses

    def weighted_sum(self, losses: dict[str, Tensor]) -> Tensor:
        """
        Total training loss: every term times its weight (`class_weight` for `loss_cross_entropy*`, `mask_weight` for
        `loss_mask*`, `dice_weight` for `loss_dice*`, auxiliary terms included), summed in the order of `losses`.
        """
        total = None
        for name, loss in losses.items():
            base_name = re.sub(r"_\d+$", "", name)
            if base_name not in self.weight_dict:
                raise ValueError(f"Unknown loss term {name!r}; expected keys produced by PEMLoss.forward.")
            weighted = loss * self.weight_dict[base_name]
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("weighted_sum needs at least one loss term.")
        return total
