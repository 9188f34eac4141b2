"""PEM without torchvision: `import transformers_pem`, the PIL processor, the model and the pipeline, installed or from
a checkpoint's own code (trust_remote_code). Each case runs in a process whose `sys.path` holds this environment's
packages except torchvision (symbolic links), so torchvision is absent there as if it had never been installed."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_configs import save_confident_cityscapes_checkpoint
from transformers import pipeline

import transformers_pem
from transformers_pem import PEMForUniversalSegmentation, PEMImageProcessorPil

SOURCE = Path(transformers_pem.__file__).parents[1]
IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
SUBTASKS = ("semantic", "instance", "panoptic")
LOW = {"threshold": 0.05, "overlap_mask_area_threshold": 0.2}


@pytest.fixture(scope="module")
def packages_without_torchvision(tmp_path_factory) -> Path:
    """A folder of links to every installed package but torchvision (and this package's own install)."""
    folder = tmp_path_factory.mktemp("site-packages-without-torchvision")
    for site_packages in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        for entry in Path(site_packages).iterdir():
            if entry.name.startswith(("torchvision", "transformers_pem", "__editable__")) or entry.suffix == ".pth":
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def run_without_torchvision(script: str, packages: Path, tmp_path: Path, *arguments, installed: bool) -> dict:
    """Run `script` in a fresh isolated interpreter whose path holds `packages` (and this package when `installed`),
    after the standard library; return the JSON it prints last."""
    paths = [str(SOURCE)] * installed + [str(packages)]
    prelude = f"import sys; sys.path += {paths!r}\n"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + script, *map(str, arguments)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def tiny_checkpoint(backbone: str, directory: Path) -> tuple[PEMForUniversalSegmentation, PEMImageProcessorPil]:
    """A tiny confident PEM saved with the default (torchvision) processor; the model and the PIL processor of the
    saved settings."""
    model, _ = save_confident_cityscapes_checkpoint(directory, backbone=backbone)
    return model, PEMImageProcessorPil.from_pretrained(directory)


def pipeline_segments(segmenter) -> dict:
    """Labels and mask areas of the pipeline's segments for each subtask (thresholds low enough for the tiny model)."""
    return {
        subtask: [
            (s["label"], int((np.asarray(s["mask"]) > 0).sum())) for s in segmenter(IMAGE, subtask=subtask, **LOW)
        ]
        for subtask in SUBTASKS
    }


# Shared by both scripts (TRUST: trust_remote_code): load through the Auto classes and the pipeline, report what they
# computed.
REPORT = """
import importlib.util, json, numpy as np, PIL.Image, torch
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

directory = sys.argv[1]
image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=TRUST)
model = AutoModelForUniversalSegmentation.from_pretrained(directory, trust_remote_code=TRUST).eval()
inputs = processor(image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
segmenter = pipeline("image-segmentation", model=directory, trust_remote_code=TRUST)
report = {
    "torchvision_found": importlib.util.find_spec("torchvision") is not None,
    "processor": type(processor).__name__,
    "processor_module": type(processor).__module__,
    "pipeline_processor": type(segmenter.image_processor).__name__,
    "pixel_values": inputs["pixel_values"].tolist(),
    "class_logits": outputs.class_queries_logits.tolist(),
    "mask_logits": outputs.masks_queries_logits.tolist(),
    "segments": {
        subtask: [
            (s["label"], int((np.asarray(s["mask"]) > 0).sum()))
            for s in segmenter(image, subtask=subtask, threshold=0.05, overlap_mask_area_threshold=0.2)
        ]
        for subtask in ("semantic", "instance", "panoptic")
    },
}
"""

INSTALLED_SCRIPT = (
    "import transformers_pem\nTRUST = False\n"
    + REPORT
    + textwrap.dedent(
        """
        try:
            transformers_pem.PEMImageProcessor()
            report["torchvision_processor_error"] = None
        except ImportError as error:
            report["torchvision_processor_error"] = str(error)
        try:
            from transformers_pem.deploy.onnx_export import export_program
            export_program(model)
            report["export_error"] = None
        except ImportError as error:
            report["export_error"] = str(error)
        print(json.dumps(report))
        """
    )
)

REMOTE_CODE_SCRIPT = (
    "TRUST = True\n"
    + REPORT
    + 'report["imported_transformers_pem"] = "transformers_pem" in sys.modules\nprint(json.dumps(report))\n'
)


def assert_same_results(report: dict, model, processor, directory: Path) -> None:
    """The report's processor, model and pipeline results equal the PIL processor's and the model's here."""
    assert not report["torchvision_found"]
    assert report["processor"] == report["pipeline_processor"] == "PEMImageProcessorPil"
    inputs = processor(IMAGE, return_tensors="pt")
    torch.testing.assert_close(torch.tensor(report["pixel_values"]), inputs["pixel_values"], atol=0, rtol=0)
    with torch.no_grad():
        outputs = model(**inputs)
    torch.testing.assert_close(torch.tensor(report["class_logits"]), outputs.class_queries_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(report["mask_logits"]), outputs.masks_queries_logits, atol=1e-5, rtol=0)
    expected = pipeline_segments(pipeline("image-segmentation", model=str(directory), image_processor=processor))
    assert {subtask: [tuple(s) for s in segments] for subtask, segments in report["segments"].items()} == expected
    assert all(expected[subtask] for subtask in SUBTASKS)


def test_installed_package_works_without_torchvision(packages_without_torchvision, tmp_path):
    """`import transformers_pem` needs no torchvision: the Auto classes pick the PIL processor and the model runs
    eagerly; the torchvision processor and the export (torchvision's deformable convolution) say what they need."""
    directory = tmp_path / "checkpoint"
    model, processor = tiny_checkpoint("stdc", directory)
    report = run_without_torchvision(
        INSTALLED_SCRIPT, packages_without_torchvision, tmp_path, directory, installed=True
    )
    assert report["processor_module"] == "transformers_pem.image_processing_pem_pil"
    assert_same_results(report, model, processor, directory)
    assert report["torchvision_processor_error"].startswith("PEMImageProcessor is the torchvision backend and needs")
    assert report["export_error"] == (
        "Exporting PEM needs torchvision (its deformable convolution): pip install torchvision."
    )


# Not timm backbones: timm itself imports torchvision.
@pytest.mark.parametrize("backbone", ["stdc", "stdc-add", "resnet"])
def test_checkpoint_code_loads_without_torchvision(backbone, packages_without_torchvision, tmp_path):
    """A checkpoint saved with the default processor loads from its own code, with neither transformers_pem nor
    torchvision installed, for every backbone but timm's: the PIL processor, the model and the pipeline's three
    subtasks."""
    directory = tmp_path / "checkpoint"
    model, processor = tiny_checkpoint(backbone, directory)
    report = run_without_torchvision(
        REMOTE_CODE_SCRIPT, packages_without_torchvision, tmp_path, directory, installed=False
    )
    assert not report["imported_transformers_pem"]
    assert report["processor_module"].startswith("transformers_modules.")
    assert_same_results(report, model, processor, directory)
