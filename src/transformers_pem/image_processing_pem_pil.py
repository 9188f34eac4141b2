"""Image processor for PEM with the PIL/numpy backend."""

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict

from .image_processing_pem import PEMImageProcessorKwargs, PEMImageProcessorMixin, official_resize_size


class PEMImageProcessorPil(PEMImageProcessorMixin, PilBackend):
    r"""
    PEM image processor with the PIL/numpy backend (`AutoImageProcessor.from_pretrained(..., backend="pil")`). Same
    settings, outputs and post-processing as [`PEMImageProcessor`]; resizing goes through PIL, exactly like the
    official detectron2 test pipeline, so 8-bit images give the official `pixel_values` up to float rounding.
    """

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | None = None, **kwargs
    ) -> np.ndarray:
        """Resize with the official rule for `shortest_edge` / `longest_edge` sizes, else as the backend does."""
        if image.dtype.kind == "f" and image.max() > 1:
            # PIL resizes 8-bit data, and the backend only converts floats in [0, 1]: quantise 0-255 floats here.
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        return super().resize(image, official_resize_size(image.shape[-2:], size), resample=resample, **kwargs)

    def normalize(
        self, image: np.ndarray, mean: float | list[float], std: float | list[float], **kwargs
    ) -> np.ndarray:
        """Normalise a channels-first image; a one-element `mean` or `std` applies to every channel, as with the
        torchvision backend."""
        mean, std = (
            np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), image.shape[:1]).tolist()
            if np.size(value) == 1
            else value
            for value in (mean, std)
        )
        return super().normalize(image, mean, std, **kwargs)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float],
        image_std: float | list[float],
        **kwargs,
    ) -> BatchFeature:
        processed_images = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed_images.append(image)
        return self._pad_and_encode(processed_images, **kwargs)


# The kwargs class too: transformers looks a processor's kwargs class up by name in the processor's module.
__all__ = ["PEMImageProcessorKwargs", "PEMImageProcessorPil"]
