"""Image processor for PEM: pre-processing (torchvision backend) and the official PEM inference post-processing."""

import math

import numpy as np
import PIL.Image
import torch
from torch import nn
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .configuration_pem import PEMConfig
from .labels_pem import DATASET_LABELS

# Official test-time resize per dataset and task: detectron2 `ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)` from
# configs/<dataset>/<task>-segmentation/Base-*.yaml. The model then pads every batch to a multiple of 32
# (`MODEL.MASK_FORMER.SIZE_DIVISIBILITY`); `INPUT.SIZE_DIVISIBILITY` (512 / 640 for ADE20K) only pads training crops.
PRESET_TEST_SIZES = {
    ("cityscapes", "semantic"): (1024, 2048),
    ("cityscapes", "panoptic"): (1024, 2048),
    ("ade20k", "semantic"): (512, 2048),
    ("ade20k", "panoptic"): (640, 2560),
}

# Stride of `masks_queries_logits` with respect to the padded input.
MASK_STRIDE = 4


class PEMImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    ignore_index (`int`, *optional*, defaults to 255):
        Value of ignored pixels in segmentation maps: they belong to no target mask. `None` makes every value a class.
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        For maps where 0 means "other" (ADE20K annotations): 0 becomes ignored, every other class id k becomes k - 1,
        and `ignore_index` stays ignored.
    size_divisor (`int`, *optional*, defaults to 32):
        Pad every batch (bottom and right) to a multiple of this value, as the official model does. `0` pads only to
        the largest image of the batch.
    """

    ignore_index: int | None
    do_reduce_labels: bool
    size_divisor: int


def get_resize_output_size(
    height: int, width: int, shortest_edge: int, longest_edge: int | None = None
) -> tuple[int, int]:
    """
    Output size of the official test-time resize (detectron2 `ResizeShortestEdge`): scale the short side to
    `shortest_edge`, shrink further if the long side exceeds `longest_edge`, and round half up. It differs from
    transformers' `get_size_with_aspect_ratio`, which truncates (e.g. 375x500 -> 512x683 here, 512x682 there).
    """
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if longest_edge is not None and max(new_height, new_width) > longest_edge:
        scale = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def prepare_image_dtype(image: ImageInput) -> ImageInput:
    """
    Bring an image to a dtype the resize/normalise steps expect (uint8 or float in the 0-255 range), or raise a clear
    `ValueError`. 16-bit images (PIL `I;16*`, `uint16` arrays) are scaled from 0-65535 to 0-255; other integer arrays
    must already hold 0-255 values.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode.startswith("I;16"):
            return PIL.Image.fromarray(_scale_16bit(np.array(image)), mode="L")
        if image.mode in ("I", "F"):
            raise ValueError(
                f"PIL images of mode {image.mode!r} (32-bit) are not supported: convert them to 8-bit RGB or pass a "
                "uint8/uint16 array."
            )
        return image
    if image.ndim not in (2, 3) or min(image.shape) == 0:
        raise ValueError(
            f"Unsupported image shape {tuple(image.shape)}: expected a non-empty (H, W), (H, W, C) or (C, H, W) image."
        )
    if image.ndim == 3 and image.shape[0] not in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Unsupported image shape {tuple(image.shape)}: expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels, "
            "channels first or last."
        )
    dtype = str(image.dtype).removeprefix("torch.")
    if dtype == "uint16":
        return _scale_16bit(image)
    if dtype == "bool" or dtype.startswith("complex"):
        raise ValueError(f"Images of dtype {dtype} are not supported: pass uint8, uint16 or float images.")
    if dtype.startswith(("int", "uint")) and dtype != "uint8":
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer image of dtype {dtype} has values in [{low}, {high}]: expected 0-255 (8-bit). Pass 16-bit "
                "images as uint16, or convert the image to uint8."
            )
        return image.astype(np.uint8) if isinstance(image, np.ndarray) else image.to(torch.uint8)
    return image


def _scale_16bit(image: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    if isinstance(image, torch.Tensor):
        return (image.to(torch.float32) / 257.0).round().to(torch.uint8)
    return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)


def _expand_grayscale_arrays(images: ImageInput) -> ImageInput:
    """Give 2-D (H, W) arrays/tensors a leading channel axis, so that they are read as one grayscale image each."""
    if isinstance(images, (list, tuple)):
        return [_expand_grayscale_arrays(image) for image in images]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 2:
        return images[None]
    return images


def prepare_segmentation_maps(segmentation_maps: ImageInput, num_images: int) -> list[torch.Tensor]:
    """
    Turn segmentation maps (a PIL image, array or tensor, or a list of them; a `(batch_size, height, width)`
    array/tensor is a batch) into a list of int64 `(height, width)` tensors, one per image.
    """
    is_array = isinstance(segmentation_maps, (np.ndarray, torch.Tensor))
    if is_array and segmentation_maps.ndim == 3 and segmentation_maps.shape[0] == num_images:
        segmentation_maps = list(segmentation_maps)
    elif not isinstance(segmentation_maps, (list, tuple)):
        segmentation_maps = [segmentation_maps]
    if len(segmentation_maps) != num_images:
        raise ValueError(f"Got {num_images} images but {len(segmentation_maps)} segmentation maps.")
    prepared = []
    for index, segmentation_map in enumerate(segmentation_maps):
        if not isinstance(segmentation_map, torch.Tensor):
            segmentation_map = torch.from_numpy(np.ascontiguousarray(np.array(segmentation_map)))
        if segmentation_map.ndim == 3 and segmentation_map.shape[0] == 1:
            segmentation_map = segmentation_map[0]
        is_integral = not segmentation_map.is_floating_point() or bool(
            (segmentation_map == segmentation_map.round()).all()
        )
        if segmentation_map.ndim != 2 or segmentation_map.dtype == torch.bool or not is_integral:
            raise ValueError(
                f"Segmentation map {index} has shape {tuple(segmentation_map.shape)} and dtype "
                f"{segmentation_map.dtype}: expected a (height, width) map of integer class or instance ids. Convert"
                " RGB-encoded panoptic PNGs to ids first (id = R + 256 * G + 256**2 * B)."
            )
        prepared.append(segmentation_map.to(torch.int64))
    return prepared


def convert_segmentation_map_to_binary_masks(
    segmentation_map: torch.Tensor,
    instance_id_to_semantic_id: dict[int, int] | None = None,
    ignore_index: int | None = 255,
    do_reduce_labels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One binary mask per id of a semantic or instance map, with the class of each mask.

    Args:
        segmentation_map (`torch.Tensor` of shape `(height, width)`):
            Class ids, or instance ids when `instance_id_to_semantic_id` is given.
        instance_id_to_semantic_id (`dict[int, int]`, *optional*):
            Class of every instance id of the map.
        ignore_index (`int`, *optional*, defaults to 255):
            Id that gets no mask.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Id 0 (or class 0) is "other" and gets no mask; the other classes are shifted down by one.

    Returns:
        `tuple(torch.FloatTensor, torch.LongTensor)`: masks of shape `(num_masks, height, width)` and their classes.
    """
    if do_reduce_labels and ignore_index is None:
        raise ValueError("`do_reduce_labels=True` needs an `ignore_index` for the reduced background (e.g. 255).")
    ids = torch.unique(segmentation_map)
    ids = [int(i) for i in ids if i != ignore_index and not (do_reduce_labels and i == 0)]
    classes = []
    for segment_id in ids:
        if instance_id_to_semantic_id is None:
            classes.append(segment_id)
        elif segment_id in instance_id_to_semantic_id:
            classes.append(int(instance_id_to_semantic_id[segment_id]))
        else:
            raise ValueError(
                f"Instance id {segment_id} of the segmentation map is missing in instance_id_to_semantic_id."
            )
    if do_reduce_labels:
        # An instance of semantic class 0 ("other") is background, like id 0 of a semantic map.
        ids, classes = [i for i, c in zip(ids, classes) if c != 0], [c - 1 for c in classes if c != 0]
    masks = segmentation_map[None] == torch.tensor(ids, dtype=segmentation_map.dtype).view(-1, 1, 1)
    return masks.float(), torch.tensor(classes, dtype=torch.int64)


def binary_mask_to_rle(mask: torch.Tensor) -> list[int]:
    """
    Run-length encoding of a binary `(height, width)` mask in Mask2Former's format: `[start_1, length_1, start_2,
    length_2, ...]`, with 1-based starts of the runs of ones in the row-major flattened mask.
    """
    pixels = torch.cat([mask.new_zeros(1), mask.flatten(), mask.new_zeros(1)]).to(torch.int8)
    changes = torch.nonzero(pixels[1:] != pixels[:-1]).flatten() + 1
    changes[1::2] -= changes[::2].clone()
    return changes.tolist()


def _padded_and_valid_sizes(
    masks_queries_logits: torch.Tensor, pixel_mask: torch.Tensor | None
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The padded input size and, per image, the size of its unpadded (top-left) region."""
    batch_size, _, mask_height, mask_width = masks_queries_logits.shape
    if pixel_mask is None:
        padded_size = (mask_height * MASK_STRIDE, mask_width * MASK_STRIDE)
        return padded_size, [padded_size] * batch_size
    if pixel_mask.ndim != 3 or pixel_mask.shape[0] != batch_size:
        raise ValueError(
            f"pixel_mask must have shape (batch_size={batch_size}, height, width), got {tuple(pixel_mask.shape)}."
        )
    valid = pixel_mask.bool()
    heights, widths = valid.any(dim=2).sum(dim=1).tolist(), valid.any(dim=1).sum(dim=1).tolist()
    if min(heights) == 0 or min(widths) == 0:
        raise ValueError("pixel_mask marks no valid pixel for at least one image.")
    return tuple(pixel_mask.shape[-2:]), list(zip(heights, widths))


def _resolve_target_sizes(target_sizes, default_sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if target_sizes is None:
        return default_sizes
    if len(target_sizes) != len(default_sizes):
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {len(default_sizes)}: pass one (height, width) each."
        )
    resolved = []
    for size in target_sizes:
        height, width = (int(value) for value in size)
        if height <= 0 or width <= 0:
            raise ValueError(f"Target sizes must be positive (height, width) pairs, got {tuple(size)}.")
        resolved.append((height, width))
    return resolved


def _upsample(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of `(channels, height, width)` maps (`align_corners=False`), as in the official code."""
    return nn.functional.interpolate(mask_logits[None], size=size, mode="bilinear", align_corners=False)[0]


# Upsampled mask values held at a time by `_semantic_scores` (16 MB in float32).
SEMANTIC_BAND_ELEMENTS = 4 * 1024 * 1024


def _semantic_scores(class_probs: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`einsum("qc,qhw->chw", class_probs, sigmoid(_upsample(mask_logits, size)))`: `(num_labels, *size)` scores.

    The upsampled masks are the largest tensor of inference (`num_queries` full-size maps, 210 MB at 512x1024), so
    they are computed a band of rows at a time, which is faster (the band is reused memory) and saves that memory.
    Each band upsamples its rows of mask logits with one more row on either side. When the vertical factor is a power
    of two, the bilinear positions and weights in a band are exactly the full-map ones shifted by whole rows; PyTorch's
    resize kernel may still round the last bit differently for another tensor size, so the scores agree to ~1e-7
    (identical at the benchmark sizes). Other sizes take the unbanded path.
    """
    num_queries, height, width = mask_logits.shape
    factor = size[0] // height
    if size[0] != factor * height or factor & (factor - 1):
        return torch.einsum("qc,qhw->chw", class_probs, _upsample(mask_logits, size).sigmoid_())
    band_rows = max(1, SEMANTIC_BAND_ELEMENTS // (num_queries * factor * size[1]))
    scores = mask_logits.new_empty(class_probs.shape[1], size[0] * size[1])
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        low, high = max(start - 1, 0), min(stop + 1, height)
        masks = _upsample(mask_logits[:, low:high], ((high - low) * factor, size[1]))
        masks = masks[:, (start - low) * factor : (stop - low) * factor].reshape(num_queries, -1)
        # Sigmoids in place on the fresh band (a new tensor of this size costs more than the sigmoid); the product is
        # written straight into the band's columns of the scores.
        band = scores[:, start * factor * size[1] : stop * factor * size[1]]
        torch.mm(class_probs.t(), masks.sigmoid_(), out=band)
    return scores.view(-1, *size)


def _crop_and_resize(maps: torch.Tensor, valid_size: tuple[int, int], target_size: tuple[int, int]) -> torch.Tensor:
    """Drop the batch padding (bottom/right), then resize to the output size (detectron2 `sem_seg_postprocess`).

    A bilinear resize to the same size is the identity, so it is skipped."""
    maps = maps[:, : valid_size[0], : valid_size[1]]
    return maps if tuple(valid_size) == tuple(target_size) else _upsample(maps, target_size)


class PEMImageProcessorMixin:
    r"""
    Settings and methods shared by [`PEMImageProcessor`] (torchvision) and [`PEMImageProcessorPil`] (PIL): the
    official PEM test-time defaults, segmentation-map targets and post-processing.

    Args:
        thing_ids (`list[int]`, *optional*):
            Classes that are "things" (countable instances). In panoptic post-processing the other classes ("stuff")
            are fused by default; instance post-processing keeps only things. `None`: every class is a thing.
        resize_masks_before_semantic_inference (`bool`, *optional*, defaults to `False`):
            Order of semantic post-processing. `False` (official semantic configs): combine masks and classes at the
            padded input size, then crop and resize the class scores. `True` (official panoptic configs): crop and
            resize the query masks first. The two agree when the output size equals the processed image size.
        test_topk_per_image (`int`, *optional*, defaults to 100):
            Instance post-processing: detections kept per image (top-k over queries x classes).
    """

    valid_kwargs = PEMImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN  # = official PIXEL_MEAN / 255
    image_std = IMAGENET_DEFAULT_STD  # = official PIXEL_STD / 255
    size = {"shortest_edge": 1024, "longest_edge": 2048}  # Cityscapes test size
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = True
    size_divisor = 32
    ignore_index = 255
    do_reduce_labels = False

    def __init__(
        self,
        thing_ids: list[int] | None = None,
        resize_masks_before_semantic_inference: bool = False,
        test_topk_per_image: int = 100,
        **kwargs: Unpack[PEMImageProcessorKwargs],
    ) -> None:
        super().__init__(**kwargs)
        self.thing_ids = [int(i) for i in thing_ids] if thing_ids is not None else None
        self.resize_masks_before_semantic_inference = resize_masks_before_semantic_inference
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """
        The processor of an official configuration (see `PEMConfig.presets()`, e.g. `"pem-r50-ade20k-panoptic"`): its
        test-time resize, the dataset's thing classes, the post-processing order of its task, and for ADE20K semantic
        maps (0 = "other") `do_reduce_labels=True`. Keyword arguments override these settings.
        """
        if name not in PEMConfig.presets():
            raise ValueError(f"Unknown PEM preset {name!r}. Available presets: {', '.join(PEMConfig.presets())}.")
        _, _, dataset, task = name.split("-")
        shortest_edge, longest_edge = PRESET_TEST_SIZES[dataset, task]
        settings = {
            "size": {"shortest_edge": shortest_edge, "longest_edge": longest_edge},
            "thing_ids": [index for index, label in enumerate(DATASET_LABELS[dataset]) if label[2]],
            "resize_masks_before_semantic_inference": task == "panoptic",
            "do_reduce_labels": dataset == "ade20k" and task == "semantic",
        }
        settings.update(kwargs)
        return cls(**settings)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None = None,
        **kwargs: Unpack[PEMImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Resize, normalise and pad images, and turn segmentation maps into training targets.

        Args:
            images (`ImageInput`):
                One image or a list: PIL images, numpy arrays or torch tensors; RGB, RGBA, grayscale, 8 or 16 bit;
                channels first or last. Images of different sizes are padded to a common size.
            segmentation_maps (`ImageInput`, *optional*):
                One integer `(height, width)` map per image: class ids (semantic) or instance ids (instance/panoptic,
                with `instance_id_to_semantic_id`).
            instance_id_to_semantic_id (`dict[int, int]` or `list[dict[int, int]]`, *optional*):
                Class of every instance id, one dict for all images or one per image.

        Returns:
            [`BatchFeature`]: `pixel_values` `(batch_size, 3, height, width)`, `pixel_mask` `(batch_size, height,
            width)` (1 on image pixels, 0 on padding), and with `segmentation_maps` the lists `mask_labels` (per image
            `(num_masks, height, width)`, 0 on padding) and `class_labels` (per image `(num_masks,)`).
        """
        return super().preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> ImageInput:
        return super()._prepare_images_structure(_expand_grayscale_arrays(images), expected_ndims=expected_ndims)

    def process_image(self, image: ImageInput, *args, **kwargs):
        return super().process_image(prepare_image_dtype(image), *args, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None,
        do_convert_rgb: bool,
        input_data_format: ChannelDimension,
        device: "str | torch.device | None" = None,
        **kwargs: Unpack[PEMImageProcessorKwargs],
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        if segmentation_maps is not None:
            segmentation_maps = prepare_segmentation_maps(segmentation_maps, len(images))
            if not isinstance(instance_id_to_semantic_id, (list, tuple)):
                instance_id_to_semantic_id = [instance_id_to_semantic_id] * len(images)
            elif len(instance_id_to_semantic_id) != len(images):
                raise ValueError(
                    f"Got {len(images)} images but {len(instance_id_to_semantic_id)} instance_id_to_semantic_id dicts."
                )
            for index, (image, segmentation_map) in enumerate(zip(images, segmentation_maps)):
                if tuple(image.shape[-2:]) != tuple(segmentation_map.shape):
                    raise ValueError(
                        f"Segmentation map {index} has size {tuple(segmentation_map.shape)} but its image has size "
                        f"{tuple(image.shape[-2:])}."
                    )
        return self._preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    @staticmethod
    def _get_padded_size(
        image_sizes: list[tuple[int, int]], do_pad: bool, pad_size: SizeDict | None, size_divisor: int | None
    ) -> tuple[int, int]:
        max_height, max_width = max(size[0] for size in image_sizes), max(size[1] for size in image_sizes)
        if not do_pad:
            if len(set(image_sizes)) > 1:
                raise ValueError(
                    f"Images have different sizes after resizing ({sorted(set(image_sizes))}) and do_pad=False: "
                    "set do_pad=True to pad them to a common size."
                )
            return max_height, max_width
        if pad_size is not None:
            if pad_size.height < max_height or pad_size.width < max_width:
                raise ValueError(
                    f"pad_size ({pad_size.height}, {pad_size.width}) is smaller than the largest processed image "
                    f"({max_height}, {max_width})."
                )
            return pad_size.height, pad_size.width
        if size_divisor:
            max_height = math.ceil(max_height / size_divisor) * size_divisor
            max_width = math.ceil(max_width / size_divisor) * size_divisor
        return max_height, max_width

    @staticmethod
    def _segmentation_targets(
        segmentation_maps: list[torch.Tensor],
        instance_id_to_semantic_id: list[dict[int, int] | None],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        ignore_index: int | None,
        do_reduce_labels: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Resize maps (nearest) to the processed image sizes; binary masks padded with 0 (never a target)."""
        mask_labels, class_labels = [], []
        for segmentation_map, mapping, image_size in zip(segmentation_maps, instance_id_to_semantic_id, image_sizes):
            if tuple(segmentation_map.shape) != image_size:
                # float32 holds ids up to 2**24 exactly; nearest-exact samples pixel centres like PIL's NEAREST.
                segmentation_map = tvF.resize(
                    segmentation_map[None].float(), list(image_size), interpolation=tvF.InterpolationMode.NEAREST_EXACT
                )[0].to(torch.int64)
            masks, classes = convert_segmentation_map_to_binary_masks(
                segmentation_map, mapping, ignore_index=ignore_index, do_reduce_labels=do_reduce_labels
            )
            padding = (0, padded_size[1] - image_size[1], 0, padded_size[0] - image_size[0])  # bottom/right
            mask_labels.append(nn.functional.pad(masks, padding, value=0.0))
            class_labels.append(classes)
        return mask_labels, class_labels

    @torch.no_grad()
    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | None = None,
        return_segmentation_scores: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Semantic maps from [`PEMForUniversalSegmentationOutput`], as the official PEM inference computes them: per
        pixel, `sum_q softmax(class_logits_q)[:-1] * sigmoid(mask_logits_q)`, then the argmax over classes.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image, usually its original size. Defaults to the processed size
                without padding.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Also return the class scores `(num_labels, height, width)`.
            pixel_mask (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                The processor's `pixel_mask`, to drop the batch padding. Defaults to `outputs.pixel_mask` if the
                outputs carry it, else the inputs are assumed unpadded.

        Returns:
            `list[torch.LongTensor]` of `(height, width)` class maps, or with `return_segmentation_scores` a list of
            [`SemanticSegmentationPostProcessorOutput`] (`segmentation`, `segmentation_scores`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]  # (num_queries, num_labels); no-object dropped
            if self.resize_masks_before_semantic_inference:
                masks = _crop_and_resize(_upsample(mask_logit, padded_size), valid_size, target_size)
                # The sigmoids in place on the freshly resized masks (4x faster than a new tensor of this size).
                scores = torch.einsum("qc,qhw->chw", class_probs, masks.sigmoid_())
            else:
                scores = _semantic_scores(class_probs, mask_logit, padded_size)
                scores = _crop_and_resize(scores, valid_size, target_size)
            # `max` returns the first maximum's index like `argmax`, and is 7x faster over a leading dimension.
            segmentation = scores.max(dim=0).indices
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": segmentation, "segmentation_scores": scores}
                    )
                )
            else:
                results.append(segmentation)
        return results

    @torch.no_grad()
    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.8,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: list[tuple[int, int]] | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Panoptic segmentation as the official PEM inference computes it (defaults = official settings).

        Queries whose best class is not "no object" and scores `> threshold` are kept; each pixel goes to the kept
        query with the highest `score * sigmoid(mask)`. A query becomes a segment on its pixels with
        `sigmoid(mask) >= mask_threshold`, unless fewer than `overlap_mask_area_threshold` of its own mask
        (`sigmoid >= mask_threshold`) won the argmax. Classes in `label_ids_to_fuse` form one segment per class.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*, defaults to 0.8):
                Minimum class score of a kept query (official `OBJECT_MASK_THRESHOLD`).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                Minimum visible fraction of a query's mask (official `OVERLAP_THRESHOLD`).
            label_ids_to_fuse (`set[int]`, *optional*):
                Classes merged into a single segment. Defaults to the stuff classes (those not in `thing_ids`).
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image: `segmentation` (`torch.IntTensor` `(height, width)`, segment ids from 1, 0 =
            void) and `segments_info` (list of `{"id", "label_id", "was_fused", "score"}`).
        """
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_labels = class_logits.shape[-1] - 1
        if label_ids_to_fuse is None:
            label_ids_to_fuse = set(range(num_labels)) - set(self._thing_ids(num_labels))
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            scores, labels = class_logit.softmax(dim=-1).max(dim=-1)
            keep = labels.ne(num_labels) & (scores > threshold)
            segmentation = torch.zeros(target_size, dtype=torch.int32, device=mask_logit.device)
            segments_info = []
            results.append({"segmentation": segmentation, "segments_info": segments_info})
            if not keep.any():
                continue
            masks = _crop_and_resize(_upsample(mask_logit[keep], padded_size), valid_size, target_size).sigmoid_()
            scores, labels = scores[keep], labels[keep]
            winners = (scores.view(-1, 1, 1) * masks).max(dim=0).indices  # (height, width) index of the kept query
            fused_segment_ids: dict[int, int] = {}
            for k in range(len(labels)):
                label = int(labels[k])
                won = winners == k
                mask = won & (masks[k] >= mask_threshold)
                mask_area, original_area = int(won.sum()), int((masks[k] >= mask_threshold).sum())
                if mask_area == 0 or original_area == 0 or not mask.any():
                    continue
                if mask_area / original_area < overlap_mask_area_threshold:
                    continue
                should_fuse = label in label_ids_to_fuse
                if should_fuse and label in fused_segment_ids:
                    segmentation[mask] = fused_segment_ids[label]
                    continue
                segment_id = len(segments_info) + 1
                segmentation[mask] = segment_id
                segments_info.append(
                    {"id": segment_id, "label_id": label, "was_fused": should_fuse, "score": float(scores[k])}
                )
                if should_fuse:
                    fused_segment_ids[label] = segment_id
        return results

    @torch.no_grad()
    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: list[tuple[int, int]] | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> list[dict]:
        """
        Instance segmentation as the official PEM inference computes it: the `test_topk_per_image` best (query,
        class) pairs over `softmax(class_logits)[:, :-1]`, restricted to thing classes; binary masks
        `sigmoid(mask) > mask_threshold` at the output size; score = class probability x mean mask probability inside
        the binary mask. With the defaults, every official detection is returned.

        Args:
            outputs ([`PEMForUniversalSegmentationOutput`]):
                Model outputs (`class_queries_logits`, `masks_queries_logits`).
            threshold (`float`, *optional*, defaults to 0.0):
                Minimum score of a returned instance (the official inference keeps all top-k detections).
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Probability threshold of the binary masks.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                Unused (instances may overlap); accepted for compatibility with the `image-segmentation` pipeline.
            target_sizes (`list[tuple[int, int]]`, *optional*):
                Output `(height, width)` of each image. Defaults to the processed size without padding.
            return_coco_annotation (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as one run-length encoding per instance (see `binary_mask_to_rle`).
            return_binary_maps (`bool`, *optional*, defaults to `False`):
                Return `segmentation` as a `(num_instances, height, width)` boolean tensor, one mask per instance.
            pixel_mask (`torch.Tensor`, *optional*):
                See [`~PEMImageProcessor.post_process_semantic_segmentation`].

        Returns:
            `list[dict]`, one per image, instances sorted by decreasing score: `segmentation` (`torch.IntTensor`
            `(height, width)` of instance ids from 0, -1 = background, each pixel showing the best-scoring instance
            covering it; or the RLE list / binary maps) and `segments_info` (`{"id", "label_id", "was_fused",
            "score"}`).
        """
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps cannot both be True.")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be a probability in (0, 1), got {mask_threshold}.")
        mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))  # exactly 0.0 for 0.5
        class_logits, mask_logits, padded_size, valid_sizes, target_sizes = self._unpack_outputs(
            outputs, target_sizes, pixel_mask
        )
        num_queries, num_labels = class_logits.shape[1], class_logits.shape[2] - 1
        thing_ids = torch.tensor(self._thing_ids(num_labels), dtype=torch.int64, device=class_logits.device)
        top_k = min(self.test_topk_per_image, num_queries * num_labels)
        results = []
        for class_logit, mask_logit, valid_size, target_size in zip(
            class_logits, mask_logits, valid_sizes, target_sizes
        ):
            class_probs = class_logit.softmax(dim=-1)[:, :-1]
            topk_scores, topk_indices = class_probs.flatten().topk(top_k, sorted=False)
            labels, queries = topk_indices % num_labels, topk_indices // num_labels
            is_thing = torch.isin(labels, thing_ids)
            topk_scores, labels, queries = topk_scores[is_thing], labels[is_thing], queries[is_thing]

            # Masks depend only on the query: resize each selected query once (detections share queries).
            queries, detection_query = torch.unique(queries, return_inverse=True)
            masks = _crop_and_resize(_upsample(mask_logit[queries], padded_size), valid_size, target_size)
            binary_masks = (masks > mask_logit_threshold).float()
            mask_scores = (masks.sigmoid().flatten(1) * binary_masks.flatten(1)).sum(1) / (
                binary_masks.flatten(1).sum(1) + 1e-6
            )
            scores = topk_scores * mask_scores[detection_query]
            order = [i for i in scores.argsort(descending=True, stable=True).tolist() if scores[i] >= threshold]
            binary_masks = binary_masks[detection_query[order]].bool()

            segments_info = [
                {"id": index, "label_id": int(labels[i]), "was_fused": False, "score": float(scores[i])}
                for index, i in enumerate(order)
            ]
            if return_binary_maps:
                segmentation = binary_masks
            elif return_coco_annotation:
                segmentation = [binary_mask_to_rle(mask) for mask in binary_masks]
            else:
                segmentation = torch.full(target_size, -1, dtype=torch.int32, device=masks.device)
                for index in reversed(range(len(order))):  # the best-scoring instance ends on top
                    segmentation[binary_masks[index]] = index
            results.append({"segmentation": segmentation, "segments_info": segments_info})
        return results

    def _thing_ids(self, num_labels: int) -> list[int]:
        if self.thing_ids is None:
            return list(range(num_labels))
        if any(not 0 <= i < num_labels for i in self.thing_ids):
            raise ValueError(
                f"thing_ids {self.thing_ids} do not fit a model with {num_labels} classes: set the processor's "
                "thing_ids to class indices of this model."
            )
        return self.thing_ids

    @staticmethod
    def _unpack_outputs(outputs, target_sizes, pixel_mask):
        class_logits = outputs.class_queries_logits.float()  # (batch_size, num_queries, num_labels + 1)
        mask_logits = outputs.masks_queries_logits.float()  # (batch_size, num_queries, height / 4, width / 4)
        if pixel_mask is None:
            pixel_mask = getattr(outputs, "pixel_mask", None)
        padded_size, valid_sizes = _padded_and_valid_sizes(mask_logits, pixel_mask)
        return class_logits, mask_logits, padded_size, valid_sizes, _resolve_target_sizes(target_sizes, valid_sizes)


class PEMImageProcessor(PEMImageProcessorMixin, TorchvisionBackend):
    r"""
    PEM image processor (torchvision backend, the `AutoImageProcessor` default). Pre-processing follows the official
    test pipeline: resize the short side to `size["shortest_edge"]` (long side at most `size["longest_edge"]`,
    detectron2 rounding), normalise with the ImageNet mean/std, and pad each batch bottom/right with 0 to a multiple
    of `size_divisor`. The `post_process_*` methods reproduce the official semantic, panoptic and instance inference.
    See [`PEMImageProcessorMixin`] for the post-processing settings and `from_preset` for the official presets.

    Example:

    ```python
    >>> from transformers_pem import PEMImageProcessor
    >>> processor = PEMImageProcessor.from_preset("pem-r50-cityscapes-panoptic")
    >>> inputs = processor(images, return_tensors="pt")
    >>> outputs = model(**inputs)
    >>> panoptic = processor.post_process_panoptic_segmentation(
    ...     outputs, target_sizes=[image.size[::-1] for image in images], pixel_mask=inputs["pixel_mask"]
    ... )
    ```
    """

    def resize(
        self,
        image: torch.Tensor,
        size: SizeDict,
        resample: "PILImageResampling | tvF.InterpolationMode | int | None" = None,
        **kwargs,
    ) -> torch.Tensor:
        """Resize with the official rule for `shortest_edge` / `longest_edge` sizes, else as the backend does."""
        if size.shortest_edge:
            height, width = get_resize_output_size(*image.shape[-2:], size.shortest_edge, size.longest_edge)
            size = SizeDict(height=height, width=width)
        return super().resize(image, size, resample=resample, **kwargs)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        segmentation_maps: list[torch.Tensor] | None,
        instance_id_to_semantic_id: list[dict[int, int] | None] | None,
        do_resize: bool,
        size: SizeDict,
        resample: "PILImageResampling | tvF.InterpolationMode | None",
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float],
        image_std: float | list[float],
        do_pad: bool,
        pad_size: SizeDict | None,
        size_divisor: int | None,
        ignore_index: int | None,
        do_reduce_labels: bool,
        disable_grouping: bool | None,
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        grouped_images, grouped_images_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed_images_grouped = {}
        for shape, stacked_images in grouped_images.items():
            if do_resize:
                stacked_images = self.resize(stacked_images, size=size, resample=resample)
            processed_images_grouped[shape] = self.rescale_and_normalize(
                stacked_images, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
        processed_images = reorder_images(processed_images_grouped, grouped_images_index)

        image_sizes = [tuple(image.shape[-2:]) for image in processed_images]
        padded_size = self._get_padded_size(image_sizes, do_pad, pad_size, size_divisor)
        # Normalised images are padded with 0 (the mean colour), top-left aligned, as detectron2's ImageList does.
        padded_images, pixel_mask = self.pad(
            processed_images,
            pad_size=SizeDict(height=padded_size[0], width=padded_size[1]),
            fill_value=0,
            return_mask=True,
            disable_grouping=disable_grouping,
        )
        encoded_inputs = BatchFeature(
            data={"pixel_values": padded_images, "pixel_mask": pixel_mask}, tensor_type=return_tensors
        )
        if segmentation_maps is not None:
            # Lists, not tensors: images have different numbers of masks.
            encoded_inputs["mask_labels"], encoded_inputs["class_labels"] = self._segmentation_targets(
                segmentation_maps, instance_id_to_semantic_id, image_sizes, padded_size, ignore_index, do_reduce_labels
            )
        return encoded_inputs


__all__ = ["PEMImageProcessor"]
