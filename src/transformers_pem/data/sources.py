"""Image and video sources: the files of a path, folder or glob pattern, and the frames they hold."""

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import PIL.Image

from ..image_loading_pem import image_frames
from ..utils.extras import require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def find_sources(source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image and video files of `source`: one file, the files of a folder (recursively, sorted) or of a glob
    pattern (a path that exists is taken as it is, even with `*?[` in its name). Files under the folder `exclude`
    (an output folder inside the source) are left out. Raises a `ValueError` if there are none."""
    text = str(source)
    if Path(text).is_file():
        paths = [Path(text)]
    elif Path(text).is_dir():
        paths = sorted(path for path in Path(text).rglob("*") if path.is_file())
    elif glob.has_magic(text):
        paths = [Path(path) for path in sorted(glob.glob(text, recursive=True)) if os.path.isfile(path)]
    else:
        raise ValueError(f"{text} does not exist: pass an image, a video, a folder or a glob pattern (quoted).")
    if exclude is not None:
        excluded = Path(exclude).resolve()
        paths = [path for path in paths if not path.resolve().is_relative_to(excluded)]
    paths = [path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
    if not paths:
        outside = f" outside {exclude}" if exclude is not None else ""
        raise ValueError(
            f"No images or videos found in {text}{outside} (looked for {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})."
        )
    return paths


def source_root(source: str | os.PathLike) -> Path:
    """The folder that names of `source`'s files are relative to: the folder itself, a file's folder, or a glob
    pattern's folder before its first wildcard."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file() or not glob.has_magic(str(source)):
        return path.parent
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def source_name(path: Path, root: Path) -> str:
    """A file's name in the outputs: its path relative to `root`, suffix kept (`a/img.png` and `b/img.png`, or
    `img.png` and `img.jpg`, stay apart), with `/` separators."""
    relative = Path(os.path.relpath(path.absolute(), root.absolute()))
    if relative.parts and relative.parts[0] == "..":  # a glob reaching above its folder: name it by its full path
        relative = Path(*path.absolute().parts[1:])
    return relative.as_posix()


def read_frames(path: Path, name: str) -> Iterator[tuple[str, PIL.Image.Image]]:
    """`(name, RGB image)` of an image file (decoded as viewers show it: see `image_loading_pem`), or of every frame
    of a video or an animated image (`<name>/<frame>`, videos read with PyAV). Unreadable files raise `ValueError`."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        frames = image_frames(path)
        first = next(frames)
        second = next(frames, None)
        if second is None:
            yield name, first
            return
        yield f"{name}/{0:06d}", first
        yield f"{name}/{1:06d}", second
        for index, frame in enumerate(frames, start=2):
            yield f"{name}/{index:06d}", frame
        return
    av = require("av", "video", "Reading videos")
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            for count, frame in enumerate(container.decode(video=0), start=1):
                yield f"{name}/{count - 1:06d}", frame.to_image().convert("RGB")
    except av.FFmpegError as error:
        raise ValueError(f"cannot decode the video: {error}") from error
    if count == 0:
        raise ValueError("the video has no frames")
