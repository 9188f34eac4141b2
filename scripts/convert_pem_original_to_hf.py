"""Convert an official PEM checkpoint (detectron2 `.pth` / `.pkl`) into a transformers `save_pretrained` directory, or
build a PEM with ImageNet backbone weights. Same as `pem convert`; run with `--help` for the
options, e.g.

    python scripts/convert_pem_original_to_hf.py --checkpoint model_final.pth \
        --config configs/cityscapes/semantic-segmentation/pem_R50_bs32_90k.yaml --output-dir pem-r50-cityscapes
"""

from transformers_pem.cli.convert import main

if __name__ == "__main__":
    main()
