"""`pem`, the command line: `pem predict` on images, folders, globs and videos with every task and its official
output formats, the subcommands over the other command lines, exit codes."""

import json
import socket
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


def output_names(folder: Path, suffix: str) -> list[str]:
    """The image names of a `pem predict` output folder (`overlays/`, `segments/`): relative paths, suffix off."""
    return sorted(path.relative_to(folder).as_posix().removesuffix(suffix) for path in folder.rglob(f"*{suffix}"))


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
    # Named by their path under the source, suffix kept; a video's frames in a folder named after it.
    names = ["clip.mp4/000000", "clip.mp4/000001", "clip.mp4/000002", "image0.png", "image1.png"]
    assert "Segmented 5 images" in captured.out and "Skipped 1 unreadable files" in captured.err
    assert output_names(out / "overlays", ".png") == names
    assert output_names(out / "segments", ".json") == names
    image = PIL.Image.open(sources / "image0.png").convert("RGB")
    expected = predict(model, processor, [image], task=task)[0]
    record = json.loads((out / "segments" / "image0.png.json").read_text())
    assert record["size"] == [48, 80] and record["task"] == task and record["image"] == "image0.png"
    overlay = PIL.Image.open(out / "overlays" / "image0.png.png")
    assert overlay.width >= 80 and overlay.height >= 48  # the image, plus the legend
    if task == "semantic":
        # Cityscapes labelIds: the class's official label id at every pixel.
        label_ids = np.asarray([label.dataset_id for label in CITYSCAPES_LABELS])[expected["semantic"].numpy()]
        written = np.array(PIL.Image.open(out / "semantic" / "image0.png_labelIds.png"))
        np.testing.assert_array_equal(written, label_ids)
        classes, areas = np.unique(expected["semantic"].numpy(), return_counts=True)
        assert [(s["label_id"], s["area"]) for s in record["segments"]] == list(zip(classes.tolist(), areas.tolist()))
    elif task == "panoptic":
        segments = expected["panoptic"]["segments_info"]
        assert [s["id"] for s in record["segments"]] == [s["id"] for s in segments] and segments
        ids = rgb_to_id(np.array(PIL.Image.open(out / "panoptic" / "image0.png.png")))
        np.testing.assert_array_equal(ids, expected["panoptic"]["segmentation"].numpy())
        annotations = json.loads((out / "panoptic.json").read_text())["annotations"]
        assert [a["image_id"] for a in annotations] == names  # in the sorted order of the files
        category_ids = [CITYSCAPES_LABELS[s["label_id"]].dataset_id for s in segments]
        assert [s["category_id"] for s in annotations[names.index("image0.png")]["segments_info"]] == category_ids
    else:
        segments = expected["instance"]["segments_info"]
        assert [s["score"] for s in record["segments"]] == [round(s["score"], 6) for s in segments] and segments
        assert all(CITYSCAPES_LABELS[s["label_id"]].isthing for s in segments)
        instances = json.loads((out / "instances.json").read_text())
        assert len([i for i in instances if i["image_id"] == "image0.png"]) == len(segments)


@pytest.mark.slow
def test_predict_a_glob_and_a_single_video(checkpoint, sources, tmp_path):
    directory, _, _ = checkpoint
    completed = run_pem("predict", str(sources / "image*.png"), f"--model={directory}", f"--out={tmp_path / 'a'}")
    assert completed.returncode == 0, completed.stderr
    assert output_names(tmp_path / "a" / "overlays", ".png") == ["image0.png", "image1.png"]
    completed = run_pem("predict", str(sources / "clip.mp4"), f"--model={directory}", f"--out={tmp_path / 'b'}")
    assert completed.returncode == 0, completed.stderr
    assert output_names(tmp_path / "b" / "overlays", ".png") == [f"clip.mp4/{i:06d}" for i in range(3)]


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


def predict_into(directory, source, out, *options: str) -> int:
    return main(["predict", str(source), f"--model={directory}", f"--out={out}", "--no-progress",
                 "--allocator=default", *options])  # fmt: skip


def annotations_of(out: Path) -> dict:
    """`image_id -> segments_info` of a run's panoptic.json, which must be a well-formed COCO-panoptic file."""
    coco = json.loads((out / "panoptic.json").read_text())
    image_ids = [image["id"] for image in coco["images"]]
    assert image_ids == [annotation["image_id"] for annotation in coco["annotations"]]
    assert len(set(image_ids)) == len(image_ids)
    return {annotation["image_id"]: annotation["segments_info"] for annotation in coco["annotations"]}


@pytest.fixture(scope="module")
def same_stems(tmp_path_factory):
    """`a/img.png`, `b/img.png`, `img.png` and `img.jpg`: one stem, four images."""
    folder = tmp_path_factory.mktemp("same_stems")
    rng = np.random.default_rng(3)
    for relative in ("a/img.png", "b/img.png", "img.png", "img.jpg"):
        (folder / relative).parent.mkdir(exist_ok=True)
        PIL.Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / relative, quality=95)
    return folder


def test_predict_names_every_file_apart(checkpoint, same_stems, tmp_path, capsys):
    directory, model, processor = checkpoint
    assert predict_into(directory, same_stems, tmp_path / "out") == 0
    assert "Segmented 4 images" in capsys.readouterr().out
    names = ["a/img.png", "b/img.png", "img.jpg", "img.png"]
    assert output_names(tmp_path / "out" / "overlays", ".png") == names
    annotations = annotations_of(tmp_path / "out")
    assert sorted(annotations) == names
    for name in names:  # each output is its own image's prediction
        expected = predict(model, processor, [PIL.Image.open(same_stems / name).convert("RGB")], task="panoptic")[0]
        ids = rgb_to_id(np.array(PIL.Image.open(tmp_path / "out" / "panoptic" / f"{name}.png")))
        np.testing.assert_array_equal(ids, expected["panoptic"]["segmentation"].numpy())


def test_predict_never_reads_its_own_outputs(checkpoint, same_stems, tmp_path):
    directory, _, _ = checkpoint
    source = tmp_path / "source"
    source.mkdir()
    for name in ("img.png", "img.jpg"):
        (source / name).write_bytes((same_stems / name).read_bytes())
    assert predict_into(directory, source, source / "predictions") == 0
    assert predict_into(directory, source, source / "predictions", "--resume") == 0
    assert sorted(annotations_of(source / "predictions")) == ["img.jpg", "img.png"]
    assert output_names(source / "predictions" / "overlays", ".png") == ["img.jpg", "img.png"]


def test_predict_refuses_mixing_runs_and_resumes_or_overwrites(checkpoint, same_stems, tmp_path, capsys):
    directory, _, _ = checkpoint
    out = tmp_path / "out"
    assert predict_into(directory, f"{same_stems}/*/img.png", out) == 0  # names a/img.png, b/img.png
    overlay = out / "overlays" / "a" / "img.png.png"
    written = overlay.stat().st_mtime_ns
    capsys.readouterr()
    assert predict_into(directory, same_stems, out) == 1
    assert "holds the results of an earlier run (2 images): pass --resume" in capsys.readouterr().err
    assert predict_into(directory, same_stems, out, "--task=semantic", "--resume") == 1
    assert "a run with task 'panoptic'" in capsys.readouterr().err
    # --resume adds the new images beside the done ones, which are skipped.
    assert predict_into(directory, same_stems, out, "--resume") == 0
    captured = capsys.readouterr().out
    assert "Segmented 2 images" in captured and "(2 more done by the earlier run)" in captured
    assert overlay.stat().st_mtime_ns == written
    assert sorted(annotations_of(out)) == ["a/img.png", "b/img.png", "img.jpg", "img.png"]
    assert json.loads((out / "pem-predict.json").read_text())["status"] == "complete"
    # From folder a/, its img.png would take the name the earlier run gave to the top-level img.png.
    assert predict_into(directory, same_stems / "a", out, "--resume") == 1
    assert "which the earlier run" in capsys.readouterr().err
    (out / "notes.txt").write_text("the user's own file")
    assert predict_into(directory, same_stems / "b", out, "--task=semantic", "--overwrite") == 0
    assert not (out / "panoptic.json").exists() and (out / "notes.txt").is_file()
    assert output_names(out / "segments", ".json") == ["img.png"]
    assert predict_into(directory, same_stems, out, "--resume", "--overwrite") == 1
    assert "exclude each other" in capsys.readouterr().err


def test_a_resumed_run_lists_every_image_in_name_order(checkpoint, same_stems, tmp_path):
    directory, _, _ = checkpoint
    assert predict_into(directory, same_stems, tmp_path / "whole") == 0
    out = tmp_path / "out"
    assert predict_into(directory, f"{same_stems}/img.*", out) == 0  # img.jpg, img.png first
    assert predict_into(directory, same_stems, out, "--resume") == 0  # then a/img.png, b/img.png
    assert list(annotations_of(out)) == ["a/img.png", "b/img.png", "img.jpg", "img.png"]
    # Byte for byte the COCO file of one uninterrupted run.
    assert (out / "panoptic.json").read_bytes() == (tmp_path / "whole" / "panoptic.json").read_bytes()


def test_an_interrupted_run_is_consistent_and_resumes_to_the_whole(checkpoint, same_stems, tmp_path, monkeypatch):
    directory, _, _ = checkpoint
    assert predict_into(directory, same_stems, tmp_path / "whole") == 0
    import transformers_pem.app.files as files

    drawn = []

    def interrupt_on_the_third(*args, **kwargs):
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(1)
        return draw(*args, **kwargs)

    draw = files.draw_segmentation
    monkeypatch.setattr(files, "draw_segmentation", interrupt_on_the_third)
    out = tmp_path / "interrupted"
    assert predict_into(directory, same_stems, out) == 130  # Ctrl-C
    assert sorted(annotations_of(out)) == ["a/img.png", "b/img.png"]  # exactly the images whose records exist
    assert output_names(out / "segments", ".json") == ["a/img.png", "b/img.png"]
    assert json.loads((out / "pem-predict.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(files, "draw_segmentation", draw)
    assert predict_into(directory, same_stems, out, "--resume") == 0
    assert annotations_of(out) == annotations_of(tmp_path / "whole")
    # Byte for byte: the resumed run's COCO file is the one an uninterrupted run writes.
    assert (out / "panoptic.json").read_bytes() == (tmp_path / "whole" / "panoptic.json").read_bytes()


def test_one_bad_file_is_skipped_whatever_its_error(checkpoint, sources, same_stems, tmp_path, monkeypatch, capsys):
    directory, _, _ = checkpoint
    source = tmp_path / "source"
    source.mkdir()
    (source / "good.png").write_bytes((same_stems / "img.png").read_bytes())
    (source / "odd.png").write_bytes((same_stems / "img.png").read_bytes())
    (source / "empty.mp4").write_bytes((sources / "clip.mp4").read_bytes()[:64])  # a header, no frames
    import transformers_pem.data.sources as sources_module

    real = sources_module.image_frames

    def failing(path):
        if path.name == "odd.png":
            raise RuntimeError("a decoder bug")
        return real(path)

    monkeypatch.setattr(sources_module, "image_frames", failing)
    assert predict_into(directory, source, tmp_path / "out", "--task=instance") == 0
    captured = capsys.readouterr()
    assert "Segmented 1 images" in captured.out and "Skipped 2 unreadable files" in captured.err
    run = json.loads((tmp_path / "out" / "pem-predict.json").read_text())
    reasons = {Path(path).name: reason for path, reason in run["skipped"].items()}
    assert sorted(reasons) == ["empty.mp4", "odd.png"] and reasons["odd.png"] == "a decoder bug"
    assert {i["image_id"] for i in json.loads((tmp_path / "out" / "instances.json").read_text())} <= {"good.png"}


def test_predict_checks_its_output_before_loading_the_model(checkpoint, same_stems, tmp_path, monkeypatch, capsys):
    directory, _, _ = checkpoint
    import transformers_pem.app.files as files

    monkeypatch.setattr(files, "load_model", lambda *args: pytest.fail("the model loaded before the checks"))
    (tmp_path / "a_file").write_text("x")
    assert predict_into(directory, same_stems, tmp_path / "a_file") == 1
    assert "--out=" in capsys.readouterr().err
    assert predict_into(directory, same_stems, tmp_path / "a_file" / "below") == 1
    assert "cannot be created" in capsys.readouterr().err
    assert predict_into(directory, same_stems, tmp_path / "out", "--device=cuda:7") == 1
    assert "--device cuda:7" in capsys.readouterr().err
    assert predict_into(directory, same_stems, tmp_path / "out", "--batch-size=0") == 1
    assert "batch_size must be" in capsys.readouterr().err


def test_two_runs_never_write_one_folder_together(checkpoint, same_stems, tmp_path, capsys):
    import filelock

    directory, _, _ = checkpoint
    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(out / ".pem-predict.lock"):  # another run holds the folder
        assert predict_into(directory, same_stems, out) == 1
    assert "Another pem predict is writing to" in capsys.readouterr().err
    assert predict_into(directory, same_stems, out) == 0  # released


def test_a_path_with_glob_characters_is_taken_as_it_is(checkpoint, same_stems, tmp_path):
    directory, _, _ = checkpoint
    literal = tmp_path / "img[1].png"
    literal.write_bytes((same_stems / "img.png").read_bytes())
    assert predict_into(directory, literal, tmp_path / "out") == 0
    assert output_names(tmp_path / "out" / "overlays", ".png") == ["img[1].png"]


def test_app_refuses_an_address_it_cannot_serve_before_loading(tmp_path, capsys):
    """A port in use and a host that is not this machine's: one line, before the model loads (the folder is empty)."""
    pytest.importorskip("gradio")
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", f"--model={empty}", f"--port={port}"]) == 1
    assert f"cannot serve on --host 127.0.0.1 --port {port}" in capsys.readouterr().err
    assert main(["app", f"--model={empty}", "--host=192.0.2.1", "--port=0"]) == 1  # TEST-NET-1: nobody's address
    assert "cannot serve on --host 192.0.2.1" in capsys.readouterr().err
