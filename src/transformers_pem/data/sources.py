"""Image and video sources: the files of a path, folder or glob pattern, and the frames they hold."""

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import PIL.Image

from ..utils.extras import require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def find_sources(source: str | os.PathLike) -> list[Path]:
    """The image and video files of `source`: one file, the files of a folder (recursively, sorted) or of a glob
    pattern. Raises a `ValueError` if there are none."""
    text = str(source)
    if any(character in text for character in "*?["):
        paths = [Path(path) for path in sorted(glob.glob(text, recursive=True))]
    elif Path(text).is_dir():
        paths = sorted(path for path in Path(text).rglob("*") if path.is_file())
    elif Path(text).is_file():
        return [Path(text)]
    else:
        raise ValueError(f"{text} does not exist: pass an image, a video, a folder or a glob pattern (quoted).")
    paths = [path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
    if not paths:
        raise ValueError(
            f"No images or videos found in {text} (looked for {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})."
        )
    return paths


def read_frames(path: Path) -> Iterator[tuple[str, PIL.Image.Image]]:
    """`(name, RGB image)` of an image file, or of every frame of a video (`<stem>_<frame>`, read with PyAV).
    Unreadable files raise `OSError` or `ValueError`."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        with PIL.Image.open(path) as image:
            yield path.stem, image.convert("RGB")
        return
    av = require("av", "video", "Reading videos")
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                yield f"{path.stem}_{index:06d}", frame.to_image().convert("RGB")
    except av.FFmpegError as error:
        raise ValueError(f"cannot decode the video: {error}") from error
