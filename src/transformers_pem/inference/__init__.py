"""Running PEM on images: `predict` (test-time augmentation, sliding windows, batches; `predictor`), mixed precision
(`precision`), the CPU allocator (`allocator`), and transformers' pipeline with PEM's image decoder (`pipeline`).
"""
