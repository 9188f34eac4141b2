"""Evaluate a PEM checkpoint: the paper's metrics as a markdown table and JSON.

Same as `python -m transformers_pem.evaluate`; see `--help`. Examples:

    python scripts/evaluate.py checkpoints/pem-r50-cityscapes-semantic --dataset cityscapes \
        --data-root data/cityscapes --split val --task semantic --output results.json
    python scripts/evaluate.py CHECKPOINT --dataset ade20k --data-root data --task panoptic --tta \
        --export-dir predictions
"""

import importlib
import sys
from pathlib import Path

# This file is named like the `evaluate` library, which the metrics import, and Python puts the folder of the script
# it runs first on the import path.
_SCRIPTS = Path(__file__).resolve().parent


def _without_this_folder(paths: list[str]) -> list[str]:
    return [path for path in paths if Path(path or ".").resolve() != _SCRIPTS]


if __name__ != "__main__":
    # Imported as `evaluate` by another script of this folder (or from it as working directory): load the library
    # that was meant and hand it over in place of this module.
    _paths = sys.path[:]
    sys.path[:] = _without_this_folder(sys.path)
    del sys.modules[__name__]
    try:
        sys.modules[__name__] = importlib.import_module(__name__)
    finally:
        sys.path[:] = _paths
else:
    # Run as the script: import the package sources (a clone needs no install), never this file as `evaluate`.
    sys.path[:] = [str(_SCRIPTS.parent / "src")] + _without_this_folder(sys.path)

    from transformers_pem.evaluation_pem import main

    main()
