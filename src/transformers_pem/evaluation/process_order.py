"""The order of examples spread over processes: what merges per-process metric states and exports in the order one
process would have seen them."""

from collections.abc import Sequence


def key_order(keys: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """`(part, position)` of every element of the parts `keys` (e.g. the dataset indices each process evaluated, in
    its order), sorted by key: the order in which one process would have seen them. Keys must be unique."""
    order = sorted(
        (key, part, position) for part, part_keys in enumerate(keys) for position, key in enumerate(part_keys)
    )
    if len({key for key, _, _ in order}) != len(order):
        raise ValueError("The same key occurs twice: each example must come from one process only.")
    return [(part, position) for _, part, position in order]
