"""Draw PEM's prototypes (`transformers_pem.draw_prototypes`) of a checkpoint on an image:

python scripts/draw_prototypes.py CHECKPOINT IMAGE OUTPUT.png [--queries 3 7 12]
"""

import argparse

import PIL.Image
import torch
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

from transformers_pem import draw_prototypes
from transformers_pem.visualization.prototypes import kept_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("image")
    parser.add_argument("output")
    parser.add_argument("--queries", type=int, nargs="+", help="default: the kept segments (at most 4)")
    args = parser.parse_args()
    model = AutoModelForUniversalSegmentation.from_pretrained(args.checkpoint).eval()
    processor = AutoImageProcessor.from_pretrained(args.checkpoint)
    image = PIL.Image.open(args.image).convert("RGB")
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, output_prototype_indices=True)
    queries = args.queries or kept_queries(outputs, limit=4)
    draw_prototypes(image, outputs, queries=queries, id2label=model.config.id2label).save(args.output)
    print(f"Wrote {args.output}: queries {queries}.")


if __name__ == "__main__":
    main()
