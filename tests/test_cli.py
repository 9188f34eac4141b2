"""`pem`, the command line: `pem predict` on images, folders, globs and videos with every task and its official
output formats, the subcommands over the other command lines, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from transformers_pem import predict
from transformers_pem.cli.main import main
from transformers_pem.data.loaders import rgb_to_id
from transformers_pem.labels_pem import CITYSCAPES_LABELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(confident_checkpoint):
    return confident_checkpoint(shortest_edge=64)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A folder with two images, a corrupt file and a 3-frame video."""
    folder = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    for index, size in enumerate([(48, 80), (60, 60)]):
        PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"image{index}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    with av.open(str(folder / "clip.mp4"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return folder


def run_pem(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformers_pem.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(ROOT)},
        timeout=600,
    )


@pytest.mark.slow
def test_console_script_and_help():
    script = Path(sys.executable).parent / "pem"  # [project.scripts]: the installed entry point itself runs
    completed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0 and "    predict" in completed.stdout, completed.stderr
    completed = run_pem("--help")
    assert completed.returncode == 0
    for command in ("predict", "train", "evaluate", "convert", "export", "plot", "benchmark"):
        assert f"    {command}" in completed.stdout
    for command in ("train", "evaluate", "convert", "export", "plot", "benchmark"):  # their own command lines
        completed = run_pem(command, "--help")
        assert completed.returncode == 0 and "usage:" in completed.stdout, command


@pytest.mark.parametrize("task", ["panoptic", "semantic", "instance"])
def test_predict_writes_every_output_of_every_source(checkpoint, sources, tmp_path, task, capsys):
    directory, model, processor = checkpoint
    out = tmp_path / "out"
    assert main(["predict", str(sources), f"--model={directory}", f"--task={task}", f"--out={out}", "--no-progress",
                 "--allocator=default", "--batch-size=2"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    names = ["clip_000000", "clip_000001", "clip_000002", "image0", "image1"]
    assert "Segmented 5 images" in captured.out and "Skipped 1 unreadable files" in captured.err
    assert sorted(path.stem for path in (out / "overlays").glob("*.png")) == names
    assert sorted(path.stem for path in (out / "segments").glob("*.json")) == names
    image = PIL.Image.open(sources / "image0.png").convert("RGB")
    expected = predict(model, processor, [image], task=task)[0]
    record = json.loads((out / "segments" / "image0.json").read_text())
    assert record["size"] == [48, 80] and record["task"] == task
    overlay = PIL.Image.open(out / "overlays" / "image0.png")
    assert overlay.width >= 80 and overlay.height >= 48  # the image, plus the legend
    if task == "semantic":
        # Cityscapes labelIds: the class's official label id at every pixel.
        label_ids = np.asarray([label.dataset_id for label in CITYSCAPES_LABELS])[expected["semantic"].numpy()]
        written = np.array(PIL.Image.open(out / "semantic" / "image0_labelIds.png"))
        np.testing.assert_array_equal(written, label_ids)
        classes, areas = np.unique(expected["semantic"].numpy(), return_counts=True)
        assert [(s["label_id"], s["area"]) for s in record["segments"]] == list(zip(classes.tolist(), areas.tolist()))
    elif task == "panoptic":
        segments = expected["panoptic"]["segments_info"]
        assert [s["id"] for s in record["segments"]] == [s["id"] for s in segments] and segments
        ids = rgb_to_id(np.array(PIL.Image.open(out / "panoptic" / "image0.png")))
        np.testing.assert_array_equal(ids, expected["panoptic"]["segmentation"].numpy())
        annotations = json.loads((out / "panoptic.json").read_text())["annotations"]
        assert [a["image_id"] for a in annotations] == names  # in the sorted order of the files
        category_ids = [CITYSCAPES_LABELS[s["label_id"]].dataset_id for s in segments]
        assert [s["category_id"] for s in annotations[names.index("image0")]["segments_info"]] == category_ids
    else:
        segments = expected["instance"]["segments_info"]
        assert [s["score"] for s in record["segments"]] == [round(s["score"], 6) for s in segments] and segments
        assert all(CITYSCAPES_LABELS[s["label_id"]].isthing for s in segments)
        instances = json.loads((out / "instances.json").read_text())
        assert len([i for i in instances if i["image_id"] == "image0"]) == len(segments)


@pytest.mark.slow
def test_predict_a_glob_and_a_single_video(checkpoint, sources, tmp_path):
    directory, _, _ = checkpoint
    completed = run_pem("predict", str(sources / "image*.png"), f"--model={directory}", f"--out={tmp_path / 'a'}")
    assert completed.returncode == 0, completed.stderr
    assert sorted(path.stem for path in (tmp_path / "a" / "overlays").iterdir()) == ["image0", "image1"]
    completed = run_pem("predict", str(sources / "clip.mp4"), f"--model={directory}", f"--out={tmp_path / 'b'}")
    assert completed.returncode == 0, completed.stderr
    assert len(list((tmp_path / "b" / "overlays").iterdir())) == 3


@pytest.mark.slow
def test_exit_codes_and_one_line_errors(checkpoint, sources, tmp_path):
    directory, _, _ = checkpoint
    missing_model = run_pem("predict", str(sources), f"--model={tmp_path / 'nothing'}")
    assert missing_model.returncode == 1
    assert missing_model.stderr.strip().splitlines() == [
        f"pem predict: error: {tmp_path / 'nothing'} is not a saved PEM model (no config.json): pass a "
        "save_pretrained directory."
    ]
    (tmp_path / "empty").mkdir()
    no_images = run_pem("predict", str(tmp_path / "empty"), f"--model={directory}")
    assert no_images.returncode == 1 and "No images or videos found" in no_images.stderr
    assert len(no_images.stderr.strip().splitlines()) == 1
    only_broken = run_pem("predict", str(sources / "broken.jpg"), f"--model={directory}", f"--out={tmp_path / 'c'}")
    assert only_broken.returncode == 1 and "no readable image" in only_broken.stderr
    assert run_pem("predict", "--task=depth", str(sources), "--model=x").returncode == 2
    assert run_pem("frobnicate").returncode == 2
