"""`pem convert`: convert an official PEM checkpoint, or build a PEM with ImageNet backbone
weights (see `conversion.convert`)."""

import argparse
import logging
import sys

from ..conversion.convert import convert
from ..presets_pem import PRESETS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pem convert",
        description="Convert an official PEM checkpoint (detectron2) into a transformers `save_pretrained` directory, "
        "or build a PEM with ImageNet backbone weights to train from.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Official PEM checkpoint: detectron2 .pth / .pkl, or .safetensors.")
    source.add_argument(
        "--backbone-weights",
        help="ImageNet backbone weights instead: STDC-Seg STDCNet813M_73.91.tar / STDCNet1446_76.47.tar or their "
        "detectron2 .pkl, torchvision / timm resnet50, detectron2 R-50.pkl.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="Official yaml (configs/<dataset>/<task>-segmentation/pem_*.yaml), a preset "
        f"({', '.join(PRESETS)}), or a directory with a saved PEMConfig (config.json, optionally "
        "preprocessor_config.json).",
    )
    parser.add_argument("--output-dir", required=True, help="Directory to write the converted model to.")
    parser.add_argument("--push-to-hub", metavar="REPO", help="Also upload the directory to this Hub repository.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        model = convert(args.config, args.output_dir, args.checkpoint, args.backbone_weights, args.push_to_hub)
    except ValueError as error:
        parser.exit(1, f"error: {error}\n")
    print(f"Wrote {args.output_dir} ({model.num_parameters():,} parameters).", file=sys.stderr)


if __name__ == "__main__":
    main()
