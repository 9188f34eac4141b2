"""Input and output paths checked before any work is done, and files written atomically."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_local_or_hub(value: str | os.PathLike, argument: str, expected: str) -> None:
    """Refuse a value that names neither an existing local path nor a possible Hub id (`/data/model`, `./run`,
    `a/b/c`): a missing folder is reported as missing, not as a malformed repository name from the Hub client.
    `expected` says what to pass instead, e.g. "a save_pretrained folder or a Hub id"."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(value).exists():
        return
    try:
        validate_repo_id(str(value))
    except HFValidationError:
        raise ValueError(f"{argument} {str(value)!r} does not exist: pass {expected}.") from None


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


def check_output_file(path: str | os.PathLike, argument: str = "output") -> Path:
    """Check that the file `path` can be written (its folder created), or raise a `ValueError` naming `argument`:
    before any work is done, not after it. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{argument}={str(path)!r} is a folder: pass a file path, e.g. {str(path / 'results.json')!r}."
        )
    check_output_dir(path.parent, f"the folder of {argument}")
    return path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, parent folders created) to write the file to; renamed onto
    `path` when the block ends without an error, removed otherwise: an interrupted write never leaves a truncated
    file behind, and readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix, delete=False
    ) as file:
        temporary = Path(file.name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
