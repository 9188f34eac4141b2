"""Running PEM on images: `predict` (test-time augmentation, sliding windows, batches; `predictor`), mixed precision
(`precision`) and the CPU allocator (`allocator`).
"""
