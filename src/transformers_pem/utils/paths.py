"""Output paths checked before any work is done."""

import os
import tempfile
from pathlib import Path


def check_output_dir(path: str | os.PathLike, argument: str = "output_dir") -> Path:
    """Check that the folder `path` can be created or written, or raise a `ValueError` naming `argument`: before any
    work is done, not at the first save. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{argument}={str(path)!r} is a file, not a folder: pass a folder path.")
    existing = next(parent for parent in (path.absolute(), *path.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{argument}={str(path)!r} cannot be created: {str(existing)!r} is a file.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(
            f"{argument}={str(path)!r} cannot be written ({error.strerror or error} in {str(existing)!r}): pass a "
            "folder you can write to."
        ) from None
    return path
