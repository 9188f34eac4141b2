"""Running PEM on images: `predict` (test-time augmentation, sliding windows, batches), mixed precision, the CPU
allocator, and reading image and video files for `pem predict`.
"""
