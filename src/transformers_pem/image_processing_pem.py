"""Image processor for PEM: the official test-time pre-processing (torchvision backend), training targets from
segmentation maps, and the official inference as post-processing (`post_processing_pem`)."""

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from torch import nn
from transformers.image_processing_backends import TorchvisionBackend
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
from transformers.utils import TensorType, is_torchvision_available, logging

from .configuration_pem import SIZE_DIVISOR
from .image_loading_pem import load_image, scale_16bit
from .post_processing_pem import PEMPostProcessingMixin, inference_settings
from .presets_pem import get_preset, get_protocol

if TYPE_CHECKING:
    from torchvision.transforms.v2 import InterpolationMode

logger = logging.get_logger(__name__)


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


def official_resize_size(image_size: tuple[int, int], size: SizeDict) -> SizeDict:
    """The output size of the processors' resize: the official rule (`get_resize_output_size`) for `shortest_edge` /
    `longest_edge` sizes, else `size` itself."""
    if not size.shortest_edge:
        return size
    height, width = get_resize_output_size(*image_size, size.shortest_edge, size.longest_edge)
    return SizeDict(height=height, width=width)


def prepare_image_dtype(image: ImageInput, input_data_format: "ChannelDimension | str | None" = None) -> ImageInput:
    """
    Bring an image to a dtype the resize/normalise steps expect (uint8 or float in the 0-255 range), or raise a clear
    `ValueError`. 16-bit images (PIL `I;16*`, `uint16` arrays) are scaled from 0-65535 to 0-255; other integer arrays
    must already hold 0-255 values; float images must be finite. A 3-D array whose first and last axes could both be
    channels (e.g. `(3, 640, 3)`) needs `input_data_format`.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode.startswith("I;16"):
            return PIL.Image.fromarray(scale_16bit(np.array(image)), mode="L")
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
    if image.ndim == 3 and input_data_format is None and image.shape[0] in (1, 3, 4) and image.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"Image of shape {tuple(image.shape)} could be channels first or channels last: pass "
            'input_data_format="channels_last" (H, W, C) or "channels_first" (C, H, W).'
        )
    dtype = str(image.dtype).removeprefix("torch.")
    if dtype.startswith(("float", "bfloat")):
        finite = np.isfinite(image).all() if isinstance(image, np.ndarray) else bool(torch.isfinite(image).all())
        if not finite:
            raise ValueError("The image has NaN or infinite pixel values: replace them before segmenting it.")
    if dtype == "uint16":
        return scale_16bit(image)
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


def _float_image_to_255(image: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    """Float images in [0, 1] (as `torchvision.transforms.ToTensor` gives them) brought to the 0-255 range that
    `do_rescale` expects, with a warning: rescaled once more they would be near black."""
    is_float = image.dtype.is_floating_point if isinstance(image, torch.Tensor) else image.dtype.kind == "f"
    if not is_float or image.min() < 0 or image.max() > 1:
        return image
    logger.warning_once(
        "Float images with values in [0, 1] are taken as already rescaled and multiplied by 255 before `do_rescale`; "
        "pass uint8 images, 0-255 floats, or do_rescale=False to silence this."
    )
    return image * 255


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


class PEMImageProcessorMixin(PEMPostProcessingMixin):
    r"""
    Settings and methods shared by [`PEMImageProcessor`] (torchvision) and [`PEMImageProcessorPil`] (PIL): the
    official PEM test-time defaults, segmentation-map targets, and the post-processing of [`PEMPostProcessingMixin`]
    (its settings: `thing_ids`, `resize_masks_before_semantic_inference`, `object_mask_threshold`,
    `overlap_threshold`, `test_topk_per_image`).
    """

    valid_kwargs = PEMImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN  # = official PIXEL_MEAN / 255
    image_std = IMAGENET_DEFAULT_STD  # = official PIXEL_STD / 255
    size = dict(zip(("shortest_edge", "longest_edge"), get_protocol("cityscapes", "semantic").test_size))
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = True
    size_divisor = SIZE_DIVISOR
    ignore_index = 255
    do_reduce_labels = False

    @classmethod
    def from_preset(cls, name: str, model_config=None, **kwargs):
        """
        The processor of an official configuration (see `PEMConfig.presets()`, e.g. `"pem-r50-ade20k-panoptic"`): its
        test-time resize, the dataset's thing classes, the post-processing order of its task, and for ADE20K semantic
        maps (0 = "other") `do_reduce_labels=True`. With `model_config` (a [`PEMConfig`]), the inference settings
        (`thing_ids`, `object_mask_threshold`, `overlap_threshold`, `test_topk_per_image`) are the model's. Keyword
        arguments override any setting.
        """
        preset = get_preset(name)
        shortest_edge, longest_edge = preset.protocol.test_size
        settings = {
            "size": {"shortest_edge": shortest_edge, "longest_edge": longest_edge},
            "thing_ids": preset.thing_ids,
            "resize_masks_before_semantic_inference": preset.task == "panoptic",
            "do_reduce_labels": preset.dataset == "ade20k" and preset.task == "semantic",
        }
        if model_config is not None:
            settings.update(inference_settings(model_config))
        return cls(**{**settings, **kwargs})

    def to_dict(self) -> dict:
        """
        The saved settings. A saved `auto_map` names the processor of each backend (`{"torchvision": ..., "pil":
        ...}`, a form `AutoImageProcessor` reads), so that either loads with trust_remote_code, whichever was saved;
        the per-backend form also keeps transformers' pipeline from asking `AutoVideoProcessor`, which derives a
        "PEMVideoProcessor" from a plain string entry and asks "run custom code? [y/N]" (15 s in a terminal).
        """
        # Imported here, as the PIL module imports this one; written as a relative import, it also makes
        # transformers copy the PIL module beside this one when it saves or loads the processor's code.
        from .image_processing_pem_pil import PEMImageProcessorPil

        output = super().to_dict()
        auto_map = output.get("auto_map") or {}
        if "AutoImageProcessor" in auto_map:
            backends = {"torchvision": PEMImageProcessor, "pil": PEMImageProcessorPil}
            output["auto_map"] = {
                **auto_map,
                "AutoImageProcessor": {
                    backend: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}" for backend, cls in backends.items()
                },
            }
        return output

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

    def fetch_images(self, image_url_or_urls: "str | os.PathLike | list", timeout: float | None = None) -> ImageInput:
        """Paths, URLs and `data:` URIs decoded by `image_loading_pem.load_image`, as a viewer shows them (EXIF
        orientation, 16-bit and float images scaled, transparency over white); images pass through."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(source, timeout) for source in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_image(image_url_or_urls, timeout)
        return super().fetch_images(image_url_or_urls)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> ImageInput:
        return super()._prepare_images_structure(_expand_grayscale_arrays(images), expected_ndims=expected_ndims)

    def process_image(self, image: ImageInput, do_convert_rgb=None, input_data_format=None, **kwargs):
        image = prepare_image_dtype(image, input_data_format)
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )

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
        if kwargs.get("do_rescale"):
            images = [_float_image_to_255(image) for image in images]
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
        return self._preprocess(
            images,
            segmentation_maps=segmentation_maps,
            instance_id_to_semantic_id=instance_id_to_semantic_id,
            **kwargs,
        )

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
                segmentation_map = nn.functional.interpolate(
                    segmentation_map[None, None].float(), size=image_size, mode="nearest-exact"
                )[0, 0].to(torch.int64)
            masks, classes = convert_segmentation_map_to_binary_masks(
                segmentation_map, mapping, ignore_index=ignore_index, do_reduce_labels=do_reduce_labels
            )
            padding = (0, padded_size[1] - image_size[1], 0, padded_size[0] - image_size[0])  # bottom/right
            mask_labels.append(nn.functional.pad(masks, padding, value=0.0))
            class_labels.append(classes)
        return mask_labels, class_labels

    def _pad_and_encode(
        self,
        processed_images: list,
        segmentation_maps: list[torch.Tensor] | None,
        instance_id_to_semantic_id: list[dict[int, int] | None] | None,
        do_pad: bool,
        pad_size: SizeDict | None,
        size_divisor: int | None,
        ignore_index: int | None,
        do_reduce_labels: bool,
        return_tensors: str | TensorType | None,
        pad_kwargs: dict | None = None,
        **kwargs,
    ) -> BatchFeature:
        """The end of both backends' `_preprocess`: pad the resized, normalised images to a common size, and build the
        targets of the segmentation maps at that size."""
        image_sizes = [tuple(image.shape[-2:]) for image in processed_images]
        padded_size = self._get_padded_size(image_sizes, do_pad, pad_size, size_divisor)
        # Normalised images are padded with 0 (the mean colour), top-left aligned, as detectron2's ImageList does.
        padded_images, pixel_mask = self.pad(
            processed_images,
            pad_size=SizeDict(height=padded_size[0], width=padded_size[1]),
            return_mask=True,
            **(pad_kwargs or {}),
        )
        encoded_inputs = BatchFeature(
            data={"pixel_values": padded_images, "pixel_mask": pixel_mask}, tensor_type=return_tensors
        )
        if segmentation_maps is not None:
            mask_labels, class_labels = self._segmentation_targets(
                segmentation_maps, instance_id_to_semantic_id, image_sizes, padded_size, ignore_index, do_reduce_labels
            )
            if return_tensors != "pt" and isinstance(processed_images[0], np.ndarray):  # the PIL backend's arrays
                mask_labels = [masks.numpy() for masks in mask_labels]
                class_labels = [classes.numpy() for classes in class_labels]
            # Lists, not tensors: images have different numbers of masks.
            encoded_inputs["mask_labels"], encoded_inputs["class_labels"] = mask_labels, class_labels
        return encoded_inputs


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

    def __init__(self, **kwargs: Unpack[PEMImageProcessorKwargs]):
        # transformers' torchvision backend fails deep inside its first resize without torchvision: say so here.
        if not is_torchvision_available():
            raise ImportError(
                "PEMImageProcessor is the torchvision backend and needs torchvision: pip install torchvision, or use "
                "PEMImageProcessorPil (AutoImageProcessor picks it when torchvision is missing, or with "
                'backend="pil").'
            )
        super().__init__(**kwargs)

    def resize(
        self,
        image: torch.Tensor,
        size: SizeDict,
        resample: "PILImageResampling | InterpolationMode | int | None" = None,
        **kwargs,
    ) -> torch.Tensor:
        """Resize with the official rule for `shortest_edge` / `longest_edge` sizes, else as the backend does."""
        return super().resize(image, official_resize_size(image.shape[-2:], size), resample=resample, **kwargs)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: "PILImageResampling | InterpolationMode | None",
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float],
        image_std: float | list[float],
        disable_grouping: bool | None,
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
        return self._pad_and_encode(
            processed_images, pad_kwargs={"fill_value": 0, "disable_grouping": disable_grouping}, **kwargs
        )


__all__ = ["PEMImageProcessor"]
