"""The lean install: `pip install transformers-pem` without extras brings torch, torchvision, transformers, scipy,
pillow and safetensors (and their own dependencies) only, and that is enough for every preset, save/load and the
pipeline. The test builds such an environment from this one: a folder with exactly the distributions the core
requirements pull in (their dependency closure, read from the installed metadata), used by a `python -S` process
that sees no other site-packages."""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = (
    "accelerate",
    "datasets",
    "evaluate",
    "pycocotools",
    "cityscapesscripts",
    "timm",
    "fvcore",
    "openvino",
    "nncf",
)


def core_closure() -> list[importlib.metadata.Distribution]:
    """The installed distributions that the package's requirements without extras pull in, recursively."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    # From pyproject.toml, not the installed metadata (which an editable install may have from an older version).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        seen[name] = distribution
        pending += [Requirement(r) for r in distribution.requires or []]
    return list(seen.values())


def lean_site(folder: Path) -> Path:
    """A folder with symlinks to the top-level files and folders of the core closure's distributions."""
    folder.mkdir()
    for distribution in core_closure():
        tops = {Path(str(file)).parts[0] for file in distribution.files or []}
        for top in sorted(tops):
            if top.startswith("..") or top == "__pycache__" or (folder / top).exists():
                continue
            (folder / top).symlink_to(Path(distribution.locate_file(top)).resolve())
    return folder


LEAN_SCRIPT = textwrap.dedent(
    """
    import os, sys

    # After the standard library, as site-packages are.
    sys.path += os.environ["LEAN_PATH"].split(os.pathsep)

    import importlib.util, json, tempfile

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

    import transformers_pem
    from transformers_pem import PRESETS, PEMConfig, PEMForUniversalSegmentation, PEMImageProcessor

    star = {{}}
    exec("from transformers_pem import *", star)  # every name of __all__, with no extra installed
    optional = {optional!r}
    report = {{
        "star": sorted(name for name in star if not name.startswith("__")),
        "all": sorted(transformers_pem.__all__),
        "installed": [name for name in optional if importlib.util.find_spec(name) is not None],
        "imported": sorted({{module.split(".")[0] for module in sys.modules}} & set(optional)),
        "presets": {{}},
        "errors": {{}},
    }}
    tiny = dict(num_queries=4, hidden_dim=32, mask_dim=32, conv_dim=32, dim_feedforward=64, decoder_layers=1)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    for name in PRESETS:
        config = PEMConfig.from_preset(name, **tiny)
        processor = PEMImageProcessor.from_preset(
            name, model_config=config, size={{"shortest_edge": 64, "longest_edge": 128}}
        )
        directory = tempfile.mkdtemp()
        PEMForUniversalSegmentation(config).save_pretrained(directory)
        processor.save_pretrained(directory)
        model = AutoModelForUniversalSegmentation.from_pretrained(directory)
        loaded_processor = AutoImageProcessor.from_pretrained(directory)
        segmenter = pipeline("image-segmentation", model=model, image_processor=loaded_processor)
        masks = [segment["mask"].size for subtask in ("semantic", "panoptic", "instance")
                 for segment in segmenter(image, subtask=subtask, threshold=0.0)]
        report["presets"][name] = {{"num_labels": model.config.num_labels, "mask_sizes": sorted(set(masks))}}
    for attribute in ("train", "MeanIoU", "load_cityscapes"):
        try:
            getattr(transformers_pem, attribute)
        except ImportError as error:
            report["errors"][attribute] = str(error)
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_lean_install_runs_every_preset_and_the_pipeline(tmp_path):
    site = lean_site(tmp_path / "site")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LEAN_PATH": os.pathsep.join([str(ROOT / "src"), str(site)]),
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    completed = subprocess.run(
        [sys.executable, "-S", "-c", LEAN_SCRIPT.format(optional=OPTIONAL)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["installed"] == [], "the lean environment must not see the optional packages"
    assert report["imported"] == []
    assert report["star"] == report["all"] and "PEMForUniversalSegmentation" in report["star"]
    assert not {"train", "MeanIoU", "load_cityscapes"} & set(report["star"])  # the extras' names are not in __all__
    assert list(report["presets"]) == [
        f"pem-{backbone}-{dataset}-{task}"
        for backbone in ("r50", "stdc1", "stdc2")
        for dataset in ("cityscapes", "ade20k")
        for task in ("semantic", "panoptic")
    ]
    for name, result in report["presets"].items():
        assert result["num_labels"] == (19 if "cityscapes" in name else 150)
        assert result["mask_sizes"] == [[80, 48]]  # PIL (width, height) of the input image
    # The features of the extras fail at first use, in one line naming the extra.
    assert report["errors"] == {
        "train": 'Loading segmentation datasets needs the `datasets` package: pip install "transformers-pem[train]".',
        "MeanIoU": 'Computing the PEM metrics needs the `evaluate` package: pip install "transformers-pem[eval]".',
        "load_cityscapes": "Loading segmentation datasets needs the `datasets` package: pip install "
        '"transformers-pem[train]".',
    }
