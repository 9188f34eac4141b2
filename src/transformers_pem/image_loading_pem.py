"""Image files decoded as a viewer shows them: the one decoder of the processor's path inputs, `predict`, `pem predict`
and the web app.

Pillow alone gets several kinds of files wrong once converted to RGB: EXIF orientation is ignored (photos come out
sideways), 16-bit images are clipped to white, float images come out black, and transparent pixels show whatever
colour they hide. `image_to_rgb` fixes each of these; animated files (GIF, APNG, WebP, multi-page TIFF) are read
frame by frame by `image_frames`.
"""

import base64
import binascii
import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.utils import logging

if TYPE_CHECKING:
    import torch

logger = logging.get_logger(__name__)

ImageSource = str | os.PathLike | bytes | io.IOBase
# Transparent pixels are composited over white, as a browser shows them on a white page.
BACKGROUND = (255, 255, 255)


def scale_16bit(values: "np.ndarray | torch.Tensor") -> "np.ndarray | torch.Tensor":
    """16-bit values (0-65535) as 8-bit ones (0-255, rounded), for numpy arrays and torch tensors."""
    if isinstance(values, np.ndarray):
        return np.round(values.astype(np.float32) / 257.0).astype(np.uint8)
    import torch

    return (values.to(torch.float32) / 257.0).round().to(torch.uint8)


def _scaled_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel integer or float image brought to uint8 the way viewers display it."""
    if mode.startswith("I;16"):
        return scale_16bit(values)
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image has NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if mode == "F" and low >= 0 and high <= 1:  # float images in [0, 1], as image libraries write them
        return np.round(values * 255).astype(np.uint8)
    if mode == "I" and low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if mode == "I" and low >= 0 and high <= 65535:  # 16-bit values in a 32-bit container
        return scale_16bit(values)
    logger.warning(
        f"A {mode!r} (32-bit {'float' if mode == 'F' else 'integer'}) image with values in [{low:g}, {high:g}] is "
        "stretched from its minimum to its maximum, as image viewers show it."
    )
    return np.round((values - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def image_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """
    An 8-bit RGB copy of a decoded `image` as a viewer shows it: EXIF orientation applied, 16-bit and 32-bit images
    scaled to 8 bit (not clipped), transparent pixels composited over white, palettes and CMYK converted.

    Raises:
        `ValueError`: an image with NaN or infinite pixels, or of a mode that has no RGB conversion.
    """
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = PIL.Image.fromarray(_scaled_to_8bit(np.asarray(image), image.mode), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, BACKGROUND + (255,))
        return PIL.Image.alpha_composite(background, image).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"images of mode {image.mode!r} have no RGB conversion ({error})") from None


def _describe(source: ImageSource) -> str:
    if isinstance(source, str) and source.startswith("data:"):
        return "the data: URI"
    return str(source) if isinstance(source, (str, os.PathLike)) else "the image"


def open_image(source: ImageSource, timeout: float | None = None, decode: bool = True) -> PIL.Image.Image:
    """Open `source` with Pillow, with one-line errors that say what is wrong: a path, an `http(s)://` URL (fetched
    with `timeout`), a `data:image/...;base64,` URI, bytes or a binary file. `decode=False` reads the header only
    (the size, before the pixels are decoded)."""
    name = _describe(source)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ValueError(f"{name}: cannot download the image ({error})") from None
        source = response.content
    elif isinstance(source, str) and source.startswith("data:image/") and ";base64," in source:
        try:
            source = base64.b64decode(source.split(",", 1)[1], validate=True)
        except binascii.Error as error:
            raise ValueError(f"{name[:40]}...: not valid base64 ({error})") from None
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ValueError(f"{name}: no such file" + (" (it is a folder)" if os.path.isdir(source) else ""))
    try:
        image = PIL.Image.open(source)
        if decode:
            image.load()
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(
            f"{name}: {error} Raise PIL.Image.MAX_IMAGE_PIXELS to read it if you trust the file."
        ) from None
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, EOFError) as error:  # truncated or corrupt data (Pillow raises all three)
        raise ValueError(f"{name}: cannot decode the image, it is truncated or corrupt ({error})") from None
    return image


def image_frames(source: ImageSource) -> Iterator[PIL.Image.Image]:
    """Every frame of an image file as RGB (`image_to_rgb`): one for still images, all of an animated GIF, APNG or
    WebP, or of a multi-page TIFF."""
    with open_image(source) as image:
        name = _describe(source)
        for index in range(getattr(image, "n_frames", 1)):
            try:
                image.seek(index)
                image.load()
            except (OSError, EOFError, ValueError) as error:
                raise ValueError(f"{name}: cannot decode frame {index} ({error})") from None
            yield image_to_rgb(image)


def load_image(source: ImageSource, timeout: float | None = None) -> PIL.Image.Image:
    """
    The image at `source` (see `open_image`) in 8-bit RGB, as a viewer shows it (see `image_to_rgb`). Of an animated
    file, the first frame, with a warning (`pem predict` segments every frame).

    Raises:
        `ValueError`: a missing, unreadable, truncated or oversized file (Pillow's `MAX_IMAGE_PIXELS`), in one line.
    """
    with open_image(source, timeout) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            logger.warning(
                f"{_describe(source)} has {frames} frames: the first is used (`pem predict` segments every frame)."
            )
        return image_to_rgb(image)


__all__ = ["image_frames", "image_to_rgb", "load_image", "open_image", "scale_16bit"]
