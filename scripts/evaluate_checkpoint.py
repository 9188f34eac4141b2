"""Evaluate a PEM checkpoint: the paper's metrics as a markdown table and JSON.

Same as `python -m transformers_pem.cli.evaluate`; see `--help`. Examples:

    python scripts/evaluate_checkpoint.py checkpoints/pem-r50-cityscapes-semantic --dataset cityscapes \
        --data-root data/cityscapes --split val --task semantic --output results.json
    python scripts/evaluate_checkpoint.py CHECKPOINT --dataset ade20k --data-root data --task panoptic --tta \
        --export-dir predictions
"""

from transformers_pem.cli.evaluate import main

if __name__ == "__main__":
    main()
