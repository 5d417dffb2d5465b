"""Request tensors: stacking several requests' feeds into one batch and scattering the
batch's outputs back, and the sequence-length buckets that keep a short text from being
padded to a long one's length."""

from __future__ import annotations

import math

import numpy as np

Feeds = dict[str, np.ndarray]


def length_bucket(feeds: Feeds) -> int:
    """The sequence-length bucket of a request's token tensors; 0 for other feeds.

    Requests of one model whose sequences differ by more than 2x run as separate backend
    calls (buckets of up to 16, 32, 64, ... tokens), so a short text is not padded to a
    long one's length: a transformer's cost grows with rows x padded length.
    """
    for a in feeds.values():
        if a.ndim == 2 and a.dtype.kind in "iu":
            return max(0, math.ceil(math.log2(max(a.shape[1], 1))) - 4)
    return 0


def concat_feeds(feeds: list[Feeds]) -> tuple[Feeds, list[int]]:
    """Stack several requests' feeds along the batch axis; returns (batch, row counts).

    Equal shapes are concatenated as they are. 2-D integer token tensors (input_ids,
    attention_mask, token_type_ids: ``[rows, sequence]``) of different lengths are
    right-padded with 0 to the batch's longest, which is the pad id, mask and type id of
    BERT-style tokenizers, so padded positions are masked out.
    """
    if len(feeds) == 1:
        only = feeds[0]
        return only, [len(next(iter(only.values())))]
    names = feeds[0].keys()
    sizes = [len(f[next(iter(names))]) for f in feeds]
    return {n: _stack([f[n] for f in feeds]) for n in names}, sizes


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    tail = arrays[0].shape[1:]
    if all(a.shape[1:] == tail for a in arrays):
        return np.concatenate(arrays, axis=0)
    if not all(a.ndim == 2 and a.dtype.kind in "iu" for a in arrays):
        raise ValueError(
            f"cannot batch tensors of shapes {sorted({a.shape for a in arrays})}: only 2-D "
            "integer token tensors are padded"
        )
    longest = max(a.shape[1] for a in arrays)
    out = np.zeros((sum(len(a) for a in arrays), longest), dtype=arrays[0].dtype)
    row = 0
    for a in arrays:
        out[row : row + len(a), : a.shape[1]] = a
        row += len(a)
    return out


def split_outputs(outputs: Feeds, sizes: list[int]) -> list[Feeds]:
    """Scatter a batch's outputs back to its requests by their row counts."""
    if len(sizes) == 1:
        return [outputs]
    bounds = np.cumsum(sizes)[:-1]
    parts = {n: np.split(a, bounds, axis=0) for n, a in outputs.items()}
    return [{n: parts[n][i] for n in outputs} for i in range(len(sizes))]
