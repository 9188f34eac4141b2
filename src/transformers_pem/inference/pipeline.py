"""transformers' image-segmentation pipeline with PEM's image decoder.

`pipeline("image-segmentation")` decodes files, URLs and PIL images with transformers' `load_image`, which converts
them to RGB with Pillow alone: 16-bit images come out clipped to white, float images black, transparent pixels in
whatever colour they hide. This pipeline decodes them as `predict`, `pem predict` and the web app do
(`image_loading_pem`) and is otherwise transformers' own:

```python
>>> from transformers import pipeline
>>> from transformers_pem import PEMImageSegmentationPipeline
>>> segmenter = pipeline("image-segmentation", model="path/to/checkpoint", pipeline_class=PEMImageSegmentationPipeline)
>>> segments = segmenter("scan-16bit.png", subtask="panoptic")
```
"""

import base64
import binascii
import os

import PIL.Image
from transformers import ImageSegmentationPipeline

from ..image_loading_pem import image_to_rgb, load_image


class PEMImageSegmentationPipeline(ImageSegmentationPipeline):
    """[`ImageSegmentationPipeline`] whose inputs are decoded by [`image_loading_pem.load_image`] (paths, URLs,
    base64 strings with or without a `data:` prefix, bytes) and [`image_loading_pem.image_to_rgb`] (PIL images):
    EXIF orientation applied, 16-bit and float images scaled, transparency over white; a missing or corrupt file is a
    one-line `ValueError`."""

    def preprocess(self, image, subtask: str | None = None, timeout: float | None = None):
        if isinstance(image, PIL.Image.Image):
            image = image_to_rgb(image)
        elif isinstance(image, (str, os.PathLike, bytes)):
            image = load_image(_bare_base64_bytes(image) or image, timeout=timeout)
        return super().preprocess(image, subtask=subtask, timeout=timeout)


def _bare_base64_bytes(image: str | os.PathLike | bytes) -> bytes | None:
    """The bytes of a base64 string without a `data:` prefix (which transformers' loader takes too), else None."""
    if not isinstance(image, str) or os.path.exists(image):
        return None
    try:
        return base64.b64decode(image, validate=True) or None
    except (binascii.Error, ValueError):
        return None


__all__ = ["PEMImageSegmentationPipeline"]
