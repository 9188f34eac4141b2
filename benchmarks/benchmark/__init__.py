"""Speed, complexity and memory of PEM against transformers' Mask2Former-R50, measured in one process.

For every setting the models run interleaved (one run of each model in turn, after warm-up runs), so that the
ratios to Mask2Former compare runs made under the same machine load. Measured:

- inference latency and images/s of the forward pass, and of the forward pass followed by the model's own semantic
  post-processing (`PEMImageProcessor` / `Mask2FormerImageProcessor.post_process_semantic_segmentation`, to the input
  size), timed on the same outputs;
- training step time (forward with the loss, backward, AdamW step) on synthetic targets, steps/s and images/s;
- parameters and GMACs per component (one multiply-add = one: fvcore's `FlopCountAnalysis` with its default
  handles, as detectron2's `analyze_model` uses it, plus handles for the attention and deformable-convolution ops that
  fvcore does not count);
- peak memory. On CPU each measurement runs in a fresh spawned process: the peak resident set size (`VmHWM`, reset
  through `/proc/self/clear_refs` right before the measured step) minus the resident set before the step. It covers
  everything the step allocates (tensors, oneDNN scratch space, allocator overhead) and nothing that an earlier model
  left in the allocator. `tracemalloc` would miss PyTorch's allocations. On CUDA: `torch.cuda.max_memory_allocated`.

Command line: `python scripts/benchmark.py --output-dir benchmark_results` (see `--help`). It first tunes
glibc's allocator (`tune_glibc_malloc()`; `--allocator default` leaves it alone): with the defaults, how often a model
page-faults depends on what ran before it in the process, which moved Mask2Former-R50's time by 40 % between runs.

Modules: `models` (what is benchmarked), `workloads` (what runs), `timing`, `complexity`, `memory`, `run` (all
of them), `report` and `cli`.
"""
