"""Fine-tune PEM: `accelerate launch scripts/train.py --preset pem-r50-cityscapes-semantic --data-root DIR ...`.

See `python scripts/train.py --help`; the same as `python -m transformers_pem.cli.train`, and in Python
`transformers_pem.train(TrainingConfig(...))`.
"""

from transformers_pem.cli.train import main

if __name__ == "__main__":
    main()
