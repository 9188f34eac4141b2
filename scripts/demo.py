"""`make demo`: build PEM presets, segment a generated street-like image on the CPU, print timing and shapes."""

import argparse
import statistics
import time

import torch

from transformers_pem import PEMConfig, PEMForUniversalSegmentation


def street_image(height: int, width: int) -> torch.Tensor:
    """A synthetic street scene in [0, 1]: sky, buildings, road and a few cars."""
    generator = torch.Generator().manual_seed(0)
    image = torch.empty(3, height, width)
    rows = torch.arange(height)[:, None].expand(height, width)
    image[:] = torch.tensor([0.45, 0.6, 0.9])[:, None, None]  # sky
    image[:, rows >= height // 4] = torch.tensor([0.4, 0.35, 0.3])[:, None]  # buildings
    image[:, rows >= height // 2] = torch.tensor([0.3, 0.3, 0.32])[:, None]  # road
    for _ in range(4):
        top = int(torch.randint(height // 2, height - height // 8, (1,), generator=generator))
        left = int(torch.randint(0, width - width // 8, (1,), generator=generator))
        image[:, top : top + height // 10, left : left + width // 8] = torch.rand(3, 1, 1, generator=generator)
    return (image + 0.03 * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--presets", nargs="+", default=["pem-stdc1-cityscapes-semantic", "pem-r50-cityscapes-semantic"]
    )
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pixel_values = ((street_image(*args.size) - mean) / std).unsqueeze(0)
    print(f"input {tuple(pixel_values.shape)}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.presets:
        config = PEMConfig.from_preset(name)
        model = PEMForUniversalSegmentation(config).eval()
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        timings = []
        with torch.inference_mode():
            model(pixel_values)  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs = model(pixel_values)
                timings.append(time.perf_counter() - start)
            # Official semantic inference: softmax (minus "no object") x sigmoid masks, summed over queries.
            masks = torch.nn.functional.interpolate(
                outputs.masks_queries_logits, size=args.size, mode="bilinear", align_corners=False
            )
            scores = outputs.class_queries_logits.softmax(-1)[..., :-1]
            segmentation = torch.einsum("bqc,bqhw->bchw", scores, masks.sigmoid()).argmax(1)[0]
        print(
            f"{name}: {parameters:.2f} M parameters, forward median {statistics.median(timings):.3f} s "
            f"(min {min(timings):.3f} s, {args.repeats} runs) | class_queries_logits "
            f"{tuple(outputs.class_queries_logits.shape)}, masks_queries_logits "
            f"{tuple(outputs.masks_queries_logits.shape)}, segmentation {tuple(segmentation.shape)} with "
            f"{segmentation.unique().numel()} classes (random weights)"
        )


if __name__ == "__main__":
    main()
