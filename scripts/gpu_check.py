"""What a maintainer runs where a GPU exists (none on the development machine): PEM on CUDA against CPU, mixed
precision, a training step with AMP and with activation checkpointing, the deformable convolution against
torchvision's CUDA kernel, and FPS against Mask2Former-R50 in the same run. Prints a JSON summary (and writes it with
`--output`). `--device cpu --small` runs every check at small sizes, so that the script is known to work.

    python scripts/gpu_check.py --output gpu_check.json            # one GPU, under 5 minutes
    python scripts/gpu_check.py --device cpu --small               # the tests run this
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.ops import deform_conv2d

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from benchmark.models import mask2former_r50_config  # noqa: E402
from transformers import Mask2FormerForUniversalSegmentation  # noqa: E402

from transformers_pem import PEMConfig, PEMForUniversalSegmentation  # noqa: E402
from transformers_pem.pixel_decoder_pem import PEMModulatedDeformConv  # noqa: E402

PRESETS = ["pem-r50-cityscapes-panoptic", "pem-stdc1-cityscapes-panoptic", "pem-stdc2-cityscapes-panoptic"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return (first.double().cpu() - second.double().cpu()).abs().max().item()


def model_of(preset: str, small: bool) -> PEMForUniversalSegmentation:
    torch.manual_seed(0)
    overrides = {"num_queries": 8, "decoder_layers": 2, "hidden_dim": 32, "dim_feedforward": 32} if small else {}
    return PEMForUniversalSegmentation(PEMConfig.from_preset(preset, **overrides)).eval()


def check_parity(device: torch.device, size: tuple[int, int], small: bool) -> dict:
    """Each preset on `device` against float64 on CPU, with CPU float32's own distance as the noise floor."""
    results = {}
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    for preset in PRESETS:
        model = model_of(preset, small)
        with torch.no_grad():
            reference = model.double()(images.double())
            cpu = model.float()(images)
            on_device = model.to(device)(images.to(device))
        results[preset] = {
            key: {
                "device": max_difference(on_device[key], reference[key]),
                "cpu_fp32": max_difference(cpu[key], reference[key]),
            }
            for key in ("class_queries_logits", "masks_queries_logits")
        }
    return results


def check_autocast(device: torch.device, size: tuple[int, int], small: bool) -> dict:
    """Inference under fp16 and bf16 autocast against fp32 on the same device: finite, and how far."""
    model = model_of(PRESETS[1], small).to(device)
    images = torch.randn(1, 3, *size, device=device)
    with torch.no_grad():
        reference = model(images).class_queries_logits
        results = {}
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            if device.type == "cpu" and dtype == torch.float16:
                results[name] = "skipped: no CPU float16 autocast for convolutions"
                continue
            with torch.autocast(device.type, dtype=dtype):
                logits = model(images).class_queries_logits
            results[name] = {
                "finite": bool(torch.isfinite(logits).all()),
                "max_difference": max_difference(logits, reference),
            }
    return results


def training_batch(device: torch.device, size: tuple[int, int]):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator).to(device)
    masks = [(torch.rand(3, *size, generator=generator) > 0.5).float().to(device) for _ in range(2)]
    classes = [torch.tensor([0, 11, 13], device=device) for _ in range(2)]
    return images, masks, classes


def check_training(device: torch.device, size: tuple[int, int], small: bool) -> dict:
    """One training step plain, with AMP (GradScaler on CUDA) and with activation checkpointing."""
    images, masks, classes = training_batch(device, size)
    results = {}
    gradients = {}
    for variant in ("plain", "amp", "checkpointing"):
        model = model_of(PRESETS[1], small).to(device).train()
        if variant == "checkpointing":
            model.activation_checkpointing_enable()
        autocast_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        scaler = torch.amp.GradScaler(device.type, enabled=variant == "amp" and device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=variant == "amp"):
            loss = model(images, mask_labels=masks, class_labels=classes).loss
        scaler.scale(loss).backward()
        gradients[variant] = torch.cat(
            [p.grad.flatten() / scaler.get_scale() for p in model.parameters() if p.grad is not None]
        )
        results[variant] = {
            "loss": loss.item(),
            "finite_gradients": bool(torch.isfinite(gradients[variant]).all()),
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        }
    results["checkpointing"]["max_gradient_difference"] = max_difference(
        gradients["checkpointing"], gradients["plain"]
    )
    return results


def time_call(function, device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_deformable_convolution(device: torch.device, small: bool, repeats: int) -> dict:
    """PEM's gather-based deformable convolution against torchvision's kernel on the same device."""
    channels, height, width = (16, 32, 64) if small else (128, 128, 256)
    generator = torch.Generator().manual_seed(0)
    layer = PEMModulatedDeformConv(channels, channels).to(device)
    torch.nn.init.normal_(layer.weight, std=0.05)
    inputs = torch.randn(2, channels, height, width, generator=generator).to(device)
    offset = (torch.randn(2, 18, height, width, generator=generator) * 2).to(device)
    modulation = torch.rand(2, 9, height, width, generator=generator).to(device)
    with torch.no_grad():
        ours = layer(inputs, offset, modulation)
        reference = deform_conv2d(inputs, offset, layer.weight, padding=1, mask=modulation)
        return {
            "max_difference": max_difference(ours, reference),
            "pem_seconds": time_call(lambda: layer(inputs, offset, modulation), device, repeats),
            "torchvision_seconds": time_call(
                lambda: deform_conv2d(inputs, offset, layer.weight, padding=1, mask=modulation), device, repeats
            ),
        }


def check_fps(device: torch.device, size: tuple[int, int], small: bool, repeats: int) -> dict:
    """Frames per second of PEM-R50 and Mask2Former-R50 (transformers) at `size`, timed in turn in this run."""
    images = torch.randn(1, 3, *size, device=device)
    mask2former = Mask2FormerForUniversalSegmentation(mask2former_r50_config(19)).to(device).eval()
    pem = model_of(PRESETS[0], small).to(device)
    with torch.no_grad():
        seconds = {
            "pem-r50": time_call(lambda: pem(images), device, repeats),
            "mask2former-r50": time_call(lambda: mask2former(images), device, repeats),
        }
    return {name: {"seconds": value, "fps": 1 / value} for name, value in seconds.items()} | {
        "speed_ratio": seconds["mask2former-r50"] / seconds["pem-r50"],
        "paper": "PEM-R50 13.8 FPS vs Mask2Former-R50 4.1 FPS at 1024x2048 (V100-class GPU)",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="small models and sizes (what the tests run on CPU)")
    parser.add_argument("--output", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}.")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}.")
    if args.output is not None and not args.output.parent.is_dir():
        parser.error(f"--output: the folder {args.output.parent} does not exist.")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here: run on a machine with a GPU, or pass --device cpu --small.")
    small = args.small
    size, fps_size, repeats = ((64, 128), (64, 128), 2) if small else ((512, 1024), (1024, 2048), 10)
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "small": small,
        "parity": check_parity(device, size, small),
        "autocast": check_autocast(device, size, small),
        "training": check_training(device, size, small),
        "deformable_convolution": check_deformable_convolution(device, small, repeats),
        "fps": check_fps(device, fps_size, small, repeats),
    }
    text = json.dumps(summary, indent=2)
    if args.output:
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(args.output)
    print(text)
    return summary


if __name__ == "__main__":
    main()
