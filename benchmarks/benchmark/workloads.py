"""What the benchmark runs: synthetic training targets and trained-like outputs, training steps, post-processing and
the by-hand segmentation path."""

import copy
from types import SimpleNamespace
from typing import Any

import PIL.Image
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from transformers_pem import PEMImageProcessor
from transformers_pem.inference.precision import precision_autocast

from .models import Scenario


def synthetic_targets(
    batch_size: int, height: int, width: int, num_labels: int, generator: torch.Generator
) -> tuple[list[Tensor], list[Tensor]]:
    """Per image, a semantic map of 4x8 rectangles of random classes, as `mask_labels` (one binary (H, W) mask per
    class present) and `class_labels`."""
    mask_labels, class_labels = [], []
    for _ in range(batch_size):
        coarse = torch.randint(num_labels, (1, 1, 4, 8), generator=generator).float()
        semantic = F.interpolate(coarse, size=(height, width), mode="nearest")[0, 0].long()
        classes = semantic.unique()
        mask_labels.append((semantic[None] == classes[:, None, None]).float())
        class_labels.append(classes)
    return mask_labels, class_labels


def confident_outputs(
    batch_size: int,
    num_queries: int,
    num_labels: int,
    mask_size: tuple[int, int],
    seed: int = 0,
    object_fraction: float = 0.5,
) -> SimpleNamespace:
    """Model outputs shaped like a trained model's, for timing and testing post-processing (random weights give flat
    masks and no confident class, so post-processing would keep nothing): `object_fraction` of the queries each
    predict one class with high confidence and own one region of a Voronoi partition of the mask grid (logits +6
    inside, -6 outside, blurred borders, noise); the others predict "no object" and repeat an object query's mask."""
    generator = torch.Generator().manual_seed(seed)
    height, width = mask_size
    num_objects = max(1, int(num_queries * object_fraction))
    rows, cols = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    class_logits, mask_logits = [], []
    for _ in range(batch_size):
        labels = torch.randint(num_labels, (num_queries,), generator=generator)
        labels[num_objects:] = num_labels  # no object
        logits = torch.randn(num_queries, num_labels + 1, generator=generator)
        logits[torch.arange(num_queries), labels] += 8.0
        centres = torch.rand(num_objects, 2, generator=generator) * torch.tensor([height, width])
        distances = (rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2
        region = distances.argmin(dim=0)  # (height, width) object query of each mask position
        repeated = torch.randint(num_objects, (num_queries - num_objects,), generator=generator)
        owner = torch.cat([torch.arange(num_objects), repeated])
        masks = torch.where(region == owner[:, None, None], 6.0, -6.0)
        masks = F.avg_pool2d(masks[None], 5, stride=1, padding=2, count_include_pad=False)[0]
        class_logits.append(logits)
        mask_logits.append(masks + 0.5 * torch.randn(num_queries, height, width, generator=generator))
    return SimpleNamespace(
        class_queries_logits=torch.stack(class_logits), masks_queries_logits=torch.stack(mask_logits)
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def post_process(processor: Any, outputs: Any, height: int, width: int) -> list[Tensor]:
    target_sizes = [(height, width)] * outputs.class_queries_logits.shape[0]
    return processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)


class TrainingStep:
    """Training steps of one model on a fixed batch: forward with the loss, backward, AdamW (official lr and weight
    decay); with "amp" on CUDA, a gradient scaler."""

    def __init__(self, model: nn.Module, batch: tuple[Tensor, list[Tensor], list[Tensor]], precision: str):
        self.model = model.train()
        self.batch = batch
        self.device = batch[0].device
        self.precision = precision
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        use_scaler = self.device.type == "cuda" and precision == "amp"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def __call__(self) -> None:
        pixel_values, mask_labels, class_labels = self.batch
        self.optimizer.zero_grad(set_to_none=True)
        with precision_autocast(self.device, self.precision):
            loss = self.model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


def training_batch(
    scenario: Scenario, batch_size: int, device: torch.device, generator: torch.Generator
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    pixel_values = torch.randn(batch_size, 3, scenario.height, scenario.width, generator=generator)
    mask_labels, class_labels = synthetic_targets(
        batch_size, scenario.height, scenario.width, scenario.num_labels, generator
    )
    return (
        pixel_values.to(device),
        [masks.to(device) for masks in mask_labels],
        [classes.to(device) for classes in class_labels],
    )


def random_image(scenario: Scenario, generator: torch.Generator) -> PIL.Image.Image:
    pixels = torch.randint(0, 256, (scenario.height, scenario.width, 3), dtype=torch.uint8, generator=generator)
    return PIL.Image.fromarray(pixels.numpy())


def end_to_end_processor(processor: PEMImageProcessor) -> PEMImageProcessor:
    """The model's processor without its resize, so that the model sees the benchmark's input size."""
    processor = copy.deepcopy(processor)
    processor.do_resize = False
    return processor


def segment(model: nn.Module, processor: PEMImageProcessor, images: list, device: torch.device) -> list[Tensor]:
    """Processor, model and semantic post-processing to the image sizes, called by hand."""
    inputs = processor(images=images, return_tensors="pt").to(device)
    outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1] for image in images])
