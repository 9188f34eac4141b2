"""transformers' own common test files, from the source distribution of the installed transformers.

The wheel does not ship them, so the matching sdist is fetched with pip once (`pip download --no-deps --no-binary
:all: transformers==<installed>`) and its `tests/` kept in a cache folder (`$PEM_TRANSFORMERS_TESTS`, default
`~/.cache/transformers-pem/transformers-<version>`). Nothing of it is copied into this repository.

The sdist leaves out four helper modules that the common files import; stand-ins are written beside them:
- `tests/exporters/test_export.py`: `ExportTesterMixin` (transformers' `torch.export` tests) is an empty mixin, so
  those tests are not run here (`tests/test_export.py` exports PEM with `torch.export` and ONNX);
- `tests/generation/test_utils.py`: `GenerationTesterMixin` (generation only), an empty mixin;
- `tests/utils/test_configuration_utils.py`: `config_common_kwargs`, the common config settings with non-default
  values that `ConfigTester` sets and reads back;
- `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path`, which maps the Hub's test images to local files; here
  they are synthetic images of the same kind (COCO photo, ADE20K image and label map), as the tests run offline.
"""

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = importlib.metadata.version("transformers")

_STAND_INS = {
    "tests/__init__.py": "",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": (
        '"""Stand-in (not in the sdist): transformers\' export tests are not run."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": (
        '"""Stand-in (not in the sdist): generation tests, for generative models only."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n"
    ),
    "tests/utils/__init__.py": "",
    "tests/utils/test_configuration_utils.py": (
        '"""Stand-in (not in the sdist): common config settings, each with a non-default value."""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["PEMForUniversalSegmentation"],\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
    "utils/fetch_hub_objects_for_ci.py": (
        '"""Stand-in (not in the sdist): the Hub\'s test images as local synthetic images of the same kind."""\n\n'
        "from pathlib import Path\n\n"
        "IMAGES = Path(__file__).parent / 'images'\n\n\n"
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    name = url.rstrip('/').split('/')[-1]\n"
        "    path = IMAGES / name\n"
        "    return str(path) if path.exists() else url\n"
    ),
}


def _smooth_image(generator: np.random.Generator, height: int, width: int, channels: int = 3) -> Image.Image:
    """A photo-like image: smooth colours (a coarse random grid, bicubically enlarged) rather than pixel noise, so
    that resizing backends compare as they do on photos."""
    coarse = generator.integers(0, 256, (max(2, height // 40), max(2, width // 40), channels), dtype=np.uint8)
    image = Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _write_stand_ins(root: Path) -> None:
    """The stand-in modules and the local copies of the Hub's test images: a COCO photo, ADE20K images and their
    label maps (class ids 0-150 in blocks)."""
    for relative, text in _STAND_INS.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
    images = root / "utils" / "images"
    images.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    if not (images / "000000039769.jpg").exists():
        _smooth_image(generator, 480, 640).save(images / "000000039769.jpg")
    for index in (1, 2):
        if not (images / f"ADE_val_0000000{index}.png").exists():
            _smooth_image(generator, 512, 683).save(images / f"ADE_val_0000000{index}.jpg")
            labels = generator.integers(0, 151, (16, 22), dtype=np.uint8)
            labels = np.repeat(np.repeat(labels, 32, axis=0), 32, axis=1)[:512, :683]
            Image.fromarray(labels).save(images / f"ADE_val_0000000{index}.png")


def transformers_tests_root() -> Path:
    """The folder holding transformers' `tests/` package for the installed version, fetched if missing; put on
    `sys.path` (with its `utils/`)."""
    root = Path(
        os.environ.get("PEM_TRANSFORMERS_TESTS")
        or Path.home() / ".cache" / "transformers-pem" / f"transformers-{VERSION}"
    )
    if not (root / "tests" / "test_modeling_common.py").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
                + ["--dest", download, f"transformers=={VERSION}"],
                check=True,
            )
            (archive,) = Path(download).glob("transformers-*.tar.gz")
            staging = Path(tempfile.mkdtemp(dir=root.parent))
            with tarfile.open(archive) as sdist:
                members = [m for m in sdist.getmembers() if m.name.split("/")[1:2] == ["tests"]]
                sdist.extractall(staging, members=members, filter="data")
            os.replace(staging / f"transformers-{VERSION}", root)  # complete, or not there
            staging.rmdir()
    _write_stand_ins(root)
    for path in (root, root / "utils"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return root
