"""Fine-tune PEM: `accelerate launch scripts/train.py --preset pem-r50-cityscapes-semantic --data-root DIR ...`.

See `python scripts/train.py --help`; the implementation is `transformers_pem.training_pem`.
"""

from transformers_pem.training_pem import main

if __name__ == "__main__":
    main()
