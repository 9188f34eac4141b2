"""`python -m transformers_pem.export`, the ONNX exporter's command line (`commands.export`); the library functions
are in `export_pem` (export) and `modeling_onnx_pem` (the ONNX Runtime model)."""

from .commands.export import main

if __name__ == "__main__":
    main()
