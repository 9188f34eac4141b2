"""
The official PEM training augmentations (detectron2's recipe as torchvision.transforms.v2 transforms on tv_tensors),
the conversion of dataset examples to model inputs, seeded datasets and a collate function.

A training data pipeline in a few lines:

```python
>>> from torch.utils.data import DataLoader
>>> from transformers_pem import PEMImageProcessor, load_cityscapes
>>> from transformers_pem.data.augmentation import (
...     AugmentedSegmentationDataset, PEMSegmentationTransform, collate_fn, official_train_augmentation,
... )
>>> train = load_cityscapes("data/cityscapes", split="train", task="panoptic")
>>> transform = PEMSegmentationTransform(
...     PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic"),
...     task="panoptic",
...     augmentation=official_train_augmentation("cityscapes", "panoptic"),
... )
>>> loader = DataLoader(
...     AugmentedSegmentationDataset(train, transform, seed=0), batch_size=8, shuffle=True, collate_fn=collate_fn
... )
```
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..image_loading_pem import image_to_rgb
from ..image_processing_pem import get_resize_output_size
from ..labels_pem import reduce_labels as reduce_label_map
from ..presets_pem import check_task, get_protocol
from .loaders import check_same_size, segment_ids_from_image, segments_list

# Inside the augmentation, every target is one integer map `class_id * LABEL_DIVISOR + k`: k = 0 for semantic maps,
# k = 1, 2, ... for the segments of instance/panoptic maps and k = LABEL_DIVISOR - 1 for crowd regions. Void pixels
# are `ignore_index * LABEL_DIVISOR`. The crop rule reads the class as `label // LABEL_DIVISOR`.
LABEL_DIVISOR = 2**16
CROWD = LABEL_DIVISOR - 1


def encode_label_map(
    example: Mapping[str, Any], task: str, ignore_index: int = 255, reduce_labels: bool = False
) -> np.ndarray:
    """
    The target of an example as one int64 map `class_id * LABEL_DIVISOR + k` (see `LABEL_DIVISOR`), the form the
    augmentations transform. Semantic maps are reduced first with `reduce_labels` (0 -> ignored, c -> c - 1).
    """
    target = example[task]
    if task == "semantic":
        classes = np.array(target)
        if classes.ndim != 2:
            raise ValueError(
                f"Semantic maps must be single-channel class ids, got an image of mode {target.mode!r}. Colour-coded "
                "annotations must be converted to class ids first."
            )
        classes = classes.astype(np.int64)
        if reduce_labels:
            classes = reduce_label_map(classes, ignore_index)
        return classes * LABEL_DIVISOR
    segment_ids = segment_ids_from_image(target)
    lookup = {}
    for k, segment in enumerate(segments_list(example["segments_info"]), start=1):
        if k >= CROWD:
            raise ValueError(f"More than {CROWD - 1} segments in one image are not supported.")
        instance = CROWD if segment.get("iscrowd", 0) else k
        lookup[int(segment["id"])] = int(segment["category_id"]) * LABEL_DIVISOR + instance
    void = ignore_index * LABEL_DIVISOR
    unique, inverse = np.unique(segment_ids, return_inverse=True)
    labels = np.array([lookup.get(int(i), void) for i in unique], np.int64)
    return labels[inverse].reshape(segment_ids.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentations (official detectron2 recipe, as torchvision.transforms.v2 transforms)
# ---------------------------------------------------------------------------------------------------------------------


class RandomShortestEdgeResize(v2.Transform):
    """
    detectron2 `ResizeShortestEdge(short_edge_lengths, max_size, "choice")`: resize the short side to a length drawn
    from `short_edge_lengths`, shrinking further if the long side would exceed `max_size` (detectron2 rounding). Images
    are resized bilinearly with antialiasing (as PIL does in detectron2), masks with nearest neighbour, exactly.
    detectron2 resizes semantic maps with torch's `nearest` (`InterpolationMode.NEAREST`, the default here) but the
    RGB panoptic PNGs with PIL's `NEAREST`, which samples pixel centres (`InterpolationMode.NEAREST_EXACT`).
    """

    def __init__(
        self,
        short_edge_lengths: Sequence[int],
        max_size: int,
        mask_interpolation: v2.InterpolationMode = v2.InterpolationMode.NEAREST,
    ):
        super().__init__()
        if mask_interpolation not in (v2.InterpolationMode.NEAREST, v2.InterpolationMode.NEAREST_EXACT):
            raise ValueError(f"mask_interpolation must be NEAREST or NEAREST_EXACT, got {mask_interpolation}.")
        self.mask_interpolation = mask_interpolation
        if not short_edge_lengths or min(short_edge_lengths) <= 0:
            raise ValueError(f"short_edge_lengths must be positive lengths, got {short_edge_lengths}.")
        self.short_edge_lengths = [int(length) for length in short_edge_lengths]
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        length = self.short_edge_lengths[int(torch.randint(len(self.short_edge_lengths), ()))]
        return {"size": list(get_resize_output_size(height, width, length, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            # float64 keeps every id exact (float32 would stop at 2**24).
            resized = F.resize(inpt.to(torch.float64), params["size"], interpolation=self.mask_interpolation)
            return tv_tensors.wrap(resized.to(inpt.dtype), like=inpt)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


class RandomCropWithCategoryAreaConstraint(v2.Transform):
    """
    detectron2 `RandomCrop_CategoryAreaConstraint("absolute", crop_size, single_category_max_area, ignore_index)`:
    a random crop of `min(crop_size, image size)`; unless `single_category_max_area >= 1.0` (the official configs),
    up to 10 crops are drawn until no single class covers more than `single_category_max_area` of the non-ignored
    pixels of the crop and at least two classes are present (the last draw is kept otherwise). Classes are read from
    the first `tv_tensors.Mask` as `label // LABEL_DIVISOR`.
    """

    def __init__(
        self, crop_size: tuple[int, int], single_category_max_area: float = 1.0, ignore_index: int | None = 255
    ):
        super().__init__()
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be a positive (height, width), got {crop_size}.")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.single_category_max_area = float(single_category_max_area)
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = min(self.crop_size[0], height), min(self.crop_size[1], width)
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]
        attempts = 1 if self.single_category_max_area >= 1.0 or not masks else 10
        for _ in range(attempts):
            top = int(torch.randint(height - crop_height + 1, ()))
            left = int(torch.randint(width - crop_width + 1, ()))
            if attempts == 1:
                break
            classes = masks[0][..., top : top + crop_height, left : left + crop_width] // LABEL_DIVISOR
            labels, counts = torch.unique(classes, return_counts=True)
            if self.ignore_index is not None:
                counts = counts[labels != self.ignore_index]
            if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                break
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return F.crop(inpt, **params)
        return inpt


class ColorAugSSD(v2.Transform):
    """
    The SSD-style photometric distortion of detectron2 (`ColorAugSSDTransform`, used with `INPUT.COLOR_AUG_SSD`), on
    uint8 images only: brightness (p=0.5, add U(-32, 32)); then with equal probability either contrast, saturation,
    hue or saturation, hue, contrast; contrast (p=0.5, multiply by U(0.5, 1.5)); saturation (p=0.5, multiply the HSV
    saturation by U(0.5, 1.5)); hue (p=0.5, shift the 8-bit OpenCV hue (0..179) by an integer in [-18, 18], i.e. up
    to 36 degrees). Every step clips to 0..255 and truncates to uint8 as the official code does. HSV conversions follow
    OpenCV's 8-bit formulas (to within one level, as OpenCV rounds through lookup tables).
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        def maybe(draw):
            return draw() if bool(torch.rand(()) < 0.5) else None

        params = {"brightness": maybe(lambda: self._uniform(-self.brightness_delta, self.brightness_delta))}
        params["contrast_last"] = bool(torch.rand(()) < 0.5)
        steps = ("saturation", "hue", "contrast") if params["contrast_last"] else ("contrast", "saturation", "hue")
        for step in steps:
            if step == "contrast":
                params[step] = maybe(lambda: self._uniform(*self.contrast_range))
            elif step == "saturation":
                params[step] = maybe(lambda: self._uniform(*self.saturation_range))
            else:
                params[step] = maybe(lambda: int(torch.randint(-self.hue_delta, self.hue_delta + 1, ())))
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8:
            raise ValueError(f"ColorAugSSD expects uint8 images (0..255), got {inpt.dtype}.")
        image = inpt.as_subclass(torch.Tensor)
        if params["brightness"] is not None:
            image = _to_uint8(image.float() + params["brightness"])
        steps = ("saturation", "hue", "contrast") if params["contrast_last"] else ("contrast", "saturation", "hue")
        for step in steps:
            value = params[step]
            if value is None:
                continue
            if step == "contrast":
                image = _to_uint8(image.float() * value)
            else:
                hue, saturation, brightness = rgb_to_hsv_uint8(image)
                if step == "saturation":
                    saturation = _to_uint8(saturation.float() * value)
                else:
                    hue = ((hue.long() + value) % 180).to(torch.uint8)
                image = hsv_uint8_to_rgb(hue, saturation, brightness)
        return tv_tensors.wrap(image, like=inpt)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    """numpy's `clip(x, 0, 255).astype(uint8)`: clip, then truncate."""
    return values.clamp(0, 255).to(torch.uint8)


def rgb_to_hsv_uint8(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit RGB -> HSV of a `(3, H, W)` uint8 image: hue 0..179 (degrees / 2), saturation, value 0..255."""
    rgb = image.float()
    value, _ = rgb.max(dim=0)
    minimum, _ = rgb.min(dim=0)
    delta = value - minimum
    saturation = torch.where(value > 0, torch.round(255.0 * delta / value.clamp(min=1)), torch.zeros_like(value))
    red, green, blue = rgb
    safe_delta = delta.clamp(min=1)
    hue = torch.where(
        value == red,
        60.0 * (green - blue) / safe_delta,
        torch.where(
            value == green, 120.0 + 60.0 * (blue - red) / safe_delta, 240.0 + 60.0 * (red - green) / safe_delta
        ),
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) % 360.0
    hue = torch.round(hue / 2.0) % 180.0
    return hue.to(torch.uint8), saturation.to(torch.uint8), value.to(torch.uint8)


def hsv_uint8_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit HSV -> RGB (hue 0..179 in units of 2 degrees): a `(3, H, W)` uint8 image."""
    h = hue.float() * 2.0 / 60.0  # sector 0..6
    s = saturation.float() / 255.0
    v = value.float()
    sector = torch.floor(h)
    fraction = h - sector
    p = v * (1 - s)
    q = v * (1 - s * fraction)
    t = v * (1 - s * (1 - fraction))
    sector = sector.long() % 6
    red = torch.stack([v, q, p, p, t, v]).gather(0, sector[None])[0]
    green = torch.stack([t, v, v, q, p, p]).gather(0, sector[None])[0]
    blue = torch.stack([p, p, t, v, v, q]).gather(0, sector[None])[0]
    return torch.stack([red, green, blue]).round().clamp(0, 255).to(torch.uint8)


class PadToSize(v2.Transform):
    """
    Pad the bottom and right of images and masks to at least `size` (the official `INPUT.SIZE_DIVISIBILITY` padding
    of training crops: images with 128, targets with the void label).
    """

    def __init__(self, size: tuple[int, int], image_fill: int = 128, mask_fill: int = 255 * LABEL_DIVISOR):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.image_fill = image_fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - width, 0), max(self.size[0] - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            return F.pad(inpt, params["padding"], fill=self.image_fill)
        if isinstance(inpt, tv_tensors.Mask):
            return F.pad(inpt, params["padding"], fill=self.mask_fill)
        return inpt


def build_train_augmentation(
    min_sizes: Sequence[int],
    max_size: int,
    crop_size: tuple[int, int],
    single_category_max_area: float = 1.0,
    color_augmentation: bool = True,
    horizontal_flip: bool = True,
    pad_to_crop_size: bool = False,
    ignore_index: int = 255,
    mask_interpolation: v2.InterpolationMode = v2.InterpolationMode.NEAREST,
) -> v2.Compose:
    """
    The official training augmentation, in the official order: random short-side resize, random crop (with the
    single-category area rule), SSD colour distortion, horizontal flip (p=0.5), and with `pad_to_crop_size` the
    padding of smaller crops to `crop_size` (ADE20K's `SIZE_DIVISIBILITY`). Call it on `(tv_tensors.Image,
    tv_tensors.Mask)` with a uint8 image and a label map from `encode_label_map`. `mask_interpolation`: see
    [`RandomShortestEdgeResize`].
    """
    transforms = [
        RandomShortestEdgeResize(min_sizes, max_size, mask_interpolation),
        RandomCropWithCategoryAreaConstraint(crop_size, single_category_max_area, ignore_index),
    ]
    if color_augmentation:
        transforms.append(ColorAugSSD())
    if horizontal_flip:
        transforms.append(v2.RandomHorizontalFlip(p=0.5))
    if pad_to_crop_size:
        transforms.append(PadToSize(crop_size, mask_fill=ignore_index * LABEL_DIVISOR))
    return v2.Compose(transforms)


def official_train_augmentation(
    dataset: str, task: str = "semantic", scale: float = 1.0, ignore_index: int = 255
) -> v2.Compose:
    """
    The training augmentation of the official configs (`INPUT` of `configs/<dataset>/<task>-segmentation/Base-*.yaml`,
    the `Protocol` records of `presets_pem`): random short side in `[int(x * 0.1 * base) for x in range(5, 21)]` with
    a maximum size, an absolute crop (padded to the crop size for ADE20K), `SINGLE_CATEGORY_MAX_AREA 1.0`,
    `COLOR_AUG_SSD True` and horizontal flips; targets are resized as detectron2 resizes them for the task (see
    [`RandomShortestEdgeResize`]). `scale` multiplies every length (e.g. 0.125 for 128 x 256 images instead of
    1024 x 2048).
    """
    protocol = get_protocol(dataset, task)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    crop = protocol.crop_size
    return build_train_augmentation(
        [int(x * 0.1 * protocol.train_base_size * scale) for x in range(5, 21)],
        max(int(protocol.train_max_size * scale), 1),
        (max(int(crop[0] * scale), 1), max(int(crop[1] * scale), 1)),
        pad_to_crop_size=protocol.pad_crops,
        ignore_index=ignore_index,
        mask_interpolation=v2.InterpolationMode.NEAREST if task == "semantic" else v2.InterpolationMode.NEAREST_EXACT,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conversion to model inputs, seeded datasets and collation
# ---------------------------------------------------------------------------------------------------------------------


class PEMSegmentationTransform:
    """
    Turns one dataset example into model inputs: decode the target, apply the (optional) augmentation jointly to
    image and target, and let the image processor build `pixel_values`, `pixel_mask`, `mask_labels` and
    `class_labels` (no resize: the augmentation sets the size).

    Semantic targets give one mask per class present (ignored pixels in none). Instance and panoptic targets give
    one mask per non-crowd segment still visible after the augmentation; crowd regions and void pixels belong to no
    mask.

    Args:
        processor ([`PEMImageProcessor`]): Normalisation, padding to its `size_divisor` and target conversion.
        task: `"semantic"`, `"instance"` or `"panoptic"`: which target column to read.
        augmentation: A transform of `(tv_tensors.Image, tv_tensors.Mask)`, e.g. `official_train_augmentation(...)`.
            `None` keeps images at their size (e.g. for validation losses).
        ignore_index: Label of ignored pixels. Defaults to the processor's `ignore_index` (or 255).
        reduce_labels: For semantic maps with 0 = "other" (ADE20K): 0 becomes ignored and c becomes c - 1. Defaults
            to the processor's `do_reduce_labels`.
        num_labels: If given, class ids must be below it (a clear error instead of a failing loss).
    """

    def __init__(
        self,
        processor,
        task: str = "semantic",
        augmentation: v2.Transform | None = None,
        ignore_index: int | None = None,
        reduce_labels: bool | None = None,
        num_labels: int | None = None,
    ):
        check_task(task)
        self.processor = processor
        self.task = task
        self.augmentation = augmentation
        processor_ignore = getattr(processor, "ignore_index", None)
        self.ignore_index = ignore_index if ignore_index is not None else (processor_ignore or 255)
        self.reduce_labels = (
            reduce_labels if reduce_labels is not None else bool(getattr(processor, "do_reduce_labels", False))
        )
        self.num_labels = num_labels

    def __call__(self, example: Mapping[str, Any], seed: int | None = None) -> dict[str, torch.Tensor]:
        """
        Args:
            example: A row with `image` and the task's target columns (PIL images as `datasets` decodes them).
            seed: Seed of the augmentation's random draws (the global torch RNG is left untouched). `None` draws
                from the global torch RNG.

        Returns:
            `pixel_values` `(3, H, W)` float, `pixel_mask` `(H, W)` int64, `mask_labels` `(num_masks, H, W)` bool,
            `class_labels` `(num_masks,)` int64, and `label_map` `(H, W)` int32: the same target as one map
            `class_id * LABEL_DIVISOR + instance` (instance 0 for semantic), -1 on void, crowd, ignored and
            padding pixels: what [`PEMTrainerMetrics`] scores against.
        """
        # As a viewer shows it (16-bit scaled, transparency over white; `datasets` has applied EXIF orientation).
        image, target = image_to_rgb(example["image"]), example[self.task]
        where = f"example {example['image_id']!r}" if "image_id" in example else "the example"
        check_same_size(image, target, where)
        image = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
        labels = tv_tensors.Mask(
            torch.from_numpy(encode_label_map(example, self.task, self.ignore_index, self.reduce_labels))
        )
        if self.augmentation is not None:
            if seed is None:
                image, labels = self.augmentation(image, labels)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    image, labels = self.augmentation(image, labels)
        labels = labels.as_subclass(torch.Tensor)

        classes, instances = labels // LABEL_DIVISOR, labels % LABEL_DIVISOR
        if self.task == "semantic":
            segmentation_map, instance_to_class = classes, None
        else:
            # Segments get consecutive ids (skipping the ignore value); void and crowd pixels get the ignore value.
            keep = (classes != self.ignore_index) & (instances != CROWD)
            segment_labels, inverse = torch.unique(labels, return_inverse=True)
            segment_labels = segment_labels.tolist()
            local_ids = [i if i < self.ignore_index else i + 1 for i in range(len(segment_labels))]
            segmentation_map = torch.tensor(local_ids, dtype=torch.int64)[inverse]
            segmentation_map[~keep] = self.ignore_index
            instance_to_class = {i: label // LABEL_DIVISOR for i, label in zip(local_ids, segment_labels)}
        if self.num_labels is not None:
            present = classes[classes != self.ignore_index]
            if present.numel() and int(present.max()) >= self.num_labels:
                raise ValueError(
                    f"{where} has class id {int(present.max())}, but the model has {self.num_labels} classes."
                )
        inputs = self.processor(
            images=image.as_subclass(torch.Tensor),
            segmentation_maps=segmentation_map,
            instance_id_to_semantic_id=instance_to_class,
            do_resize=False,
            do_reduce_labels=False,
            ignore_index=self.ignore_index,
            return_tensors="pt",
        )
        # Void, crowd and ignored pixels are under no mask in mask_labels: -1 in label_map.
        label_map = labels.masked_fill(classes == self.ignore_index, -1)
        if self.task != "semantic":
            label_map = label_map.masked_fill(~keep, -1)
        height, width = inputs["pixel_values"].shape[-2:]
        label_map = torch.nn.functional.pad(
            label_map, (0, width - labels.shape[-1], 0, height - labels.shape[-2]), value=-1
        )
        return {
            "pixel_values": inputs["pixel_values"][0],
            "pixel_mask": inputs["pixel_mask"][0],
            # bool: a quarter of float32's memory, which matters for images with hundreds of instances (the loss
            # converts a few masks at a time where it samples them).
            "mask_labels": inputs["mask_labels"][0].bool(),
            "class_labels": inputs["class_labels"][0],
            "label_map": label_map.int(),
        }


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch`: a hash of the three numbers (numpy `SeedSequence`)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class AugmentedSegmentationDataset(torch.utils.data.Dataset):
    """
    A map-style torch dataset applying a [`PEMSegmentationTransform`] to a `datasets.Dataset`, with augmentation
    seeded per sample by `sample_seed(seed, epoch, index)`. The result depends only on `(seed, epoch, index)`, not on
    workers, order or earlier samples, so a resumed run sees exactly the samples of an uninterrupted one.
    accelerate's prepared data loaders call `set_epoch` at the start of every epoch; with a plain `DataLoader`, call
    it yourself (and do not use `persistent_workers`, which would keep the workers' old epoch).
    """

    def __init__(self, dataset, transform: PEMSegmentationTransform, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        try:
            example = self.dataset[index]
            return self.transform(example, seed=sample_seed(self.seed, self.epoch, index))
        except OSError as error:  # PIL decodes lazily: a truncated or corrupt file fails here
            raise ValueError(
                f"Example {index} of the training data cannot be decoded ({error}){self._files_of(index)}: replace "
                "or remove the file."
            ) from error

    def _files_of(self, index: int) -> str:
        """The files behind example `index` of a `datasets` dataset with image columns, for error messages."""
        try:
            import datasets

            raw = self.dataset.select([index])
            for name, feature in raw.features.items():
                if isinstance(feature, datasets.Image):
                    raw = raw.cast_column(name, datasets.Image(decode=False))
            paths = [value["path"] for value in raw[0].values() if isinstance(value, dict) and value.get("path")]
            return f" (files: {', '.join(paths)})" if paths else ""
        except Exception:  # naming the files is a courtesy; the decoding error above is the one to report
            return ""


def collate_fn(examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """
    Batch transformed examples: `pixel_values` `(B, 3, H, W)` and `pixel_mask` `(B, H, W)` stacked (padded bottom and
    right with 0 to the largest size when sizes differ), `mask_labels` and `class_labels` kept as lists (images have
    different numbers of masks), masks padded like the images; with the examples' `label_map`s, `label_maps`
    `(B, H, W)` stacked, padded with -1. The model ignores `label_maps`; `Trainer` can gather them
    (batch-first tensors, unlike the lists) for [`PEMTrainerMetrics`].
    """
    if not examples:
        raise ValueError("Cannot collate an empty list of examples.")
    height = max(example["pixel_values"].shape[-2] for example in examples)
    width = max(example["pixel_values"].shape[-1] for example in examples)

    def pad(tensor: torch.Tensor, value: int = 0) -> torch.Tensor:
        return torch.nn.functional.pad(
            tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]), value=value
        )

    batch = {
        "pixel_values": torch.stack([pad(example["pixel_values"]) for example in examples]),
        "pixel_mask": torch.stack([pad(example["pixel_mask"]) for example in examples]),
        "mask_labels": [pad(example["mask_labels"]) for example in examples],
        "class_labels": [example["class_labels"] for example in examples],
    }
    if all("label_map" in example for example in examples):
        batch["label_maps"] = torch.stack([pad(example["label_map"], value=-1) for example in examples])
    return batch


__all__ = [
    "LABEL_DIVISOR",
    "AugmentedSegmentationDataset",
    "ColorAugSSD",
    "PEMSegmentationTransform",
    "PadToSize",
    "RandomCropWithCategoryAreaConstraint",
    "RandomShortestEdgeResize",
    "build_train_augmentation",
    "collate_fn",
    "encode_label_map",
    "hsv_uint8_to_rgb",
    "official_train_augmentation",
    "rgb_to_hsv_uint8",
    "sample_seed",
]
