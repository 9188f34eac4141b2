"""What the exported runtimes cost in accuracy on trained weights: PQ, PQ^th, PQ^st and mIoU of eager fp32, ONNX
Runtime fp32 / int8 and OpenVINO fp32 / int8 (NNCF variants: bias correction fast / full / none, the mask and
prototype products kept float32) on the same held-out images, with each model's forward time.

The checkpoints are Cityscapes-layout models such as `make demo` trains (`demo_output/run/final`); the images are the
demo's synthetic scenes: the validation split (held out from training; `--num-val` of them) to score, the first
`--num-calibration` training images to calibrate int8 on, as a user calibrates on their own training data.

Accuracy runs in this process. Each model's forward is timed in a process of its own (`--time-one`), so that
OpenVINO's and ONNX Runtime's thread pools never slow what is timed after them; eager is timed first and last.

    python benchmarks/runtime_accuracy.py --checkpoint demo=demo_output/run/final \\
        --checkpoint demo-2000=runs/demo-2000/final --output-dir benchmarks/cpu-2core-runtime-accuracy
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformers_pem import PEMImageProcessor
from transformers_pem.data.loaders import load_cityscapes
from transformers_pem.data.synthetic import generate_cityscapes
from transformers_pem.deploy import onnx_export, openvino_export
from transformers_pem.deploy.runtimes import load_model
from transformers_pem.evaluation.evaluate import evaluate_model

METRICS = ("PQ", "PQ_th", "PQ_st", "mIoU")
# OpenVINO int8 variants: file suffix -> `quantize_openvino` options. "default" is what `pem export` writes.
OPENVINO_VARIANTS = {
    "default": {},
    "bias-correction-full": {"bias_correction": "full"},
    "no-bias-correction": {"bias_correction": "none"},
    "products-fp32": {"ignored_patterns": [openvino_export.PRODUCT_PATTERN]},
}


def export_models(checkpoint: Path, work: Path, calibration_folder: Path, num_calibration: int) -> list[dict]:
    """Export `checkpoint` to ONNX (fp32, int8) and OpenVINO (fp32, each int8 variant) under `work`. Returns one
    entry per model: name, runtime, directory, file."""
    onnx_dir, openvino_dir = work / "onnx", work / "openvino"
    onnx_export.export(
        checkpoint, onnx_dir, quantize="int8", calibration_data=calibration_folder,
        num_calibration_images=num_calibration,
    )  # fmt: skip
    model, processor = onnx_export.load_checkpoint(checkpoint)
    converted = openvino_export.convert_openvino(model)
    openvino_export.save_openvino(converted, openvino_dir / openvino_export.OPENVINO_FILE)
    model.config.save_pretrained(openvino_dir)
    processor.save_pretrained(openvino_dir)
    images = onnx_export.calibration_images(calibration_folder, num_calibration)
    calibration = [processor(image, return_tensors="pt")["pixel_values"] for image in images]
    models = [
        {"name": "eager fp32", "runtime": "pytorch", "directory": checkpoint, "file": None},
        {"name": "ORT fp32", "runtime": "onnx", "directory": onnx_dir, "file": onnx_export.ONNX_FILE},
        {"name": "ORT int8", "runtime": "onnx", "directory": onnx_dir, "file": onnx_export.INT8_FILE},
        {"name": "OpenVINO fp32", "runtime": "openvino", "directory": openvino_dir,
         "file": openvino_export.OPENVINO_FILE},
    ]  # fmt: skip
    for variant, options in OPENVINO_VARIANTS.items():
        started = time.perf_counter()
        quantized = openvino_export.quantize_openvino(converted, calibration, **options)
        file = f"openvino_model_int8-{variant}.xml"
        openvino_export.save_openvino(quantized, openvino_dir / file)
        seconds = time.perf_counter() - started
        models.append({"name": f"OpenVINO int8 {variant}", "runtime": "openvino", "directory": openvino_dir,
                       "file": file, "quantization_s": round(seconds, 1)})  # fmt: skip
    return models


def time_one(runtime: str, directory: str, file: str | None, size: tuple[int, int], repeats: int) -> float:
    """Median forward seconds of one model on a random batch of 1 (BatchNorm folded for eager, as exported)."""
    torch.manual_seed(0)
    model = load_model(directory, runtime, model_file=file)
    if runtime == "pytorch":
        model.fold_batch_norm()
    pixel_values = torch.randn(1, 3, *size)
    times = []
    with torch.inference_mode():
        for _ in range(2):  # OpenVINO compiles a shape statically at its second run
            model(pixel_values)
        for _ in range(repeats):
            started = time.perf_counter()
            model(pixel_values)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_in_own_process(entry: dict, size: tuple[int, int], repeats: int) -> float:
    command = [sys.executable, __file__, "--time-one", entry["runtime"], str(entry["directory"]),
               entry["file"] or "", f"{size[0]}x{size[1]}", str(repeats)]  # fmt: skip
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-calibration", type=int, default=32)
    parser.add_argument("--image-size", default="128x256", help="HEIGHTxWIDTH of the synthetic scenes (the demo's)")
    parser.add_argument("--time-size", default="512x1024", help="HEIGHTxWIDTH of the timed input")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--time-one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_one:
        runtime, directory, file, size, repeats = args.time_one
        height, width = (int(value) for value in size.split("x"))
        print(time_one(runtime, directory, file or None, (height, width), int(repeats)))
        return
    if not args.checkpoint:
        parser.error("give at least one --checkpoint NAME=PATH")
    image_size = tuple(int(value) for value in args.image_size.split("x"))
    time_size = tuple(int(value) for value in args.time_size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        # The demo's generator and seed: its training images (the first ones calibrate) and unseen validation ones.
        data_root = generate_cityscapes(work / "cityscapes", args.num_calibration, args.num_val, image_size, seed=0)
        dataset = load_cityscapes(data_root, "val", "panoptic")
        for text in args.checkpoint:
            name, path = text.split("=", 1)
            models = export_models(Path(path), work / name, data_root / "leftImg8bit" / "train", args.num_calibration)
            processor = PEMImageProcessor.from_pretrained(path)
            for entry in models:
                model = load_model(entry["directory"], entry["runtime"], model_file=entry["file"])
                metrics = evaluate_model(model, processor, dataset, task="panoptic", progress=False)
                del model
                entry["metrics"] = {key: round(metrics[key], 2) for key in METRICS}
                print(name, entry["name"], entry["metrics"], flush=True)
            for entry in [*models, models[0]]:  # eager first and last: the drift of the machine
                seconds = timed_in_own_process(entry, time_size, args.repeats)
                entry.setdefault("forward_s", []).append(round(seconds, 4))
                print(name, entry["name"], f"{seconds:.3f} s", flush=True)
            for entry in models:
                entry.update(checkpoint=name, directory=None)
            rows += models
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "num_val": args.num_val, "num_calibration": args.num_calibration, "image_size": args.image_size,
            "time_size": args.time_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "checkpoints": dict(text.split("=", 1) for text in args.checkpoint),
        }  # fmt: skip
        (args.output_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
