"""Model sizes shared by the tests (importable from test files: pytest puts `tests/` on the path)."""

# The head of the official-code reference fixtures (tests/fixtures/parity, README "Case 1"): CONVS_DIM 16, MASK_DIM 32,
# HIDDEN_DIM 32, 10 queries, 4 heads, FFN 64.
PARITY_HEAD = {
    "conv_dim": 16,
    "mask_dim": 32,
    "hidden_dim": 32,
    "num_queries": 10,
    "num_attention_heads": 4,
    "dim_feedforward": 64,
}

# A tiny decoder for behaviour tests: fast on CPU, every code path of the full-size model.
TINY_DECODER = {
    "conv_dim": 16,
    "mask_dim": 16,
    "hidden_dim": 32,
    "num_queries": 8,
    "num_attention_heads": 4,
    "dim_feedforward": 32,
}
