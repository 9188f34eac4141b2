"""Optional dependencies: the model needs torch, torchvision, transformers, scipy, pillow and safetensors only; the
other features come with the package's extras (`pip install "transformers-pem[train]"`, ...)."""

import importlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise an `ImportError` in one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f'{feature} needs the `{module.split(".")[0]}` package: pip install "transformers-pem[{extra}]".'
        ) from None


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


def key_order(keys: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """`(part, position)` of every element of the parts `keys` (e.g. the dataset indices each process evaluated, in
    its order), sorted by key: the order in which one process would have seen them. Keys must be unique."""
    order = sorted(
        (key, part, position) for part, part_keys in enumerate(keys) for position, key in enumerate(part_keys)
    )
    if len({key for key, _, _ in order}) != len(order):
        raise ValueError("The same key occurs twice: each example must come from one process only.")
    return [(part, position) for _, part, position in order]
