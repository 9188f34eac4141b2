"""Optional dependencies: the model needs torch, torchvision, transformers, scipy, pillow and safetensors only; the
other features come with the package's extras (`pip install "transformers-pem[train]"`, ...)."""

import importlib
from types import ModuleType


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise an `ImportError` in one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f'{feature} needs the `{module.split(".")[0]}` package: pip install "transformers-pem[{extra}]".'
        ) from None
