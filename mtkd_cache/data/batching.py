"""Tokenize once, then cut length-sorted batches under a token budget (dynamic padding).

Token ids live in one flat int32 array plus row offsets, so a million tokenized rows cost a few hundred
MB rather than the gigabytes of Python lists. Batches hold rows of similar length: sorting by length
and filling each batch up to `batch_tokens` padded tokens wastes little compute on padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_TOKENIZE_CHUNK = 2048


@dataclass
class TokenizedRows:
    """Ragged token ids of a split: row i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # int32 [total_tokens]
    type_ids: np.ndarray | None  # int8 [total_tokens], for tokenizers that emit token_type_ids
    offsets: np.ndarray  # int64 [rows + 1]
    truncated_rows: int  # rows that lost tokens to max_length

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize_rows(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> TokenizedRows:
    """Tokenize with truncation to `max_length`, no padding, in chunks to bound peak memory."""
    id_chunks, type_chunks, lengths = [], [], []
    truncated = 0
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk_texts = list(texts[start:start + _TOKENIZE_CHUNK])
        chunk_pairs = list(pairs[start:start + _TOKENIZE_CHUNK]) if pairs is not None else None
        encoded = tokenizer(chunk_texts, chunk_pairs, truncation=True, max_length=max_length)
        chunk_lengths = [len(row) for row in encoded["input_ids"]]
        id_chunks.append(np.fromiter((t for row in encoded["input_ids"] for t in row), dtype=np.int32))
        if "token_type_ids" in encoded:
            type_chunks.append(np.fromiter((t for row in encoded["token_type_ids"] for t in row), dtype=np.int8))
        truncated += _count_truncated(tokenizer, chunk_texts, chunk_pairs, chunk_lengths, max_length)
        lengths.extend(chunk_lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(id_chunks) if id_chunks else np.zeros(0, np.int32)
    type_ids = np.concatenate(type_chunks) if type_chunks else None
    return TokenizedRows(ids=ids, type_ids=type_ids, offsets=offsets, truncated_rows=truncated)


def _count_truncated(tokenizer, texts, pairs, lengths, max_length) -> int:
    # Only rows that came out at exactly max_length can have been cut; re-tokenize just those.
    at_limit = [i for i, n in enumerate(lengths) if n >= max_length]
    if not at_limit:
        return 0
    full = tokenizer([texts[i] for i in at_limit], [pairs[i] for i in at_limit] if pairs is not None else None,
                     truncation=False, add_special_tokens=True)
    return sum(len(row) > max_length for row in full["input_ids"])


def token_budget_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int = 1024) -> list[np.ndarray]:
    """Row indices grouped into batches, longest rows first, each batch's padded size <= batch_tokens.

    A single row longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(batch_tokens // longest, max_rows))
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_rows(tokens: TokenizedRows, rows: np.ndarray, pad_id: int, pad_left: bool = False) -> dict[str, np.ndarray]:
    """Padded `input_ids`, `attention_mask` (and `token_type_ids`) int64 arrays of shape [len(rows), longest]."""
    starts, ends = tokens.offsets[rows], tokens.offsets[rows + 1]
    lengths = ends - starts
    width = int(lengths.max()) if len(rows) else 0
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    type_ids = np.zeros((len(rows), width), dtype=np.int64) if tokens.type_ids is not None else None
    for i, (start, end, length) in enumerate(zip(starts, ends, lengths)):
        columns = slice(width - length, width) if pad_left else slice(0, length)
        input_ids[i, columns] = tokens.ids[start:end]
        attention_mask[i, columns] = 1
        if type_ids is not None:
            type_ids[i, columns] = tokens.type_ids[start:end]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if type_ids is not None:
        batch["token_type_ids"] = type_ids
    return batch


def batched_forward(forward: Callable[[dict[str, np.ndarray]], np.ndarray], tokens: TokenizedRows, rows: np.ndarray,
                    batch_tokens: int, pad_id: int, pad_left: bool = False,
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 outputs [len(rows), D] of `forward` for `rows`, in their order.

    `forward` maps one padded batch (`pad_rows`) to [batch rows, D]; batches are cut under the token budget,
    longest rows first. Teacher runners and the trainer's predictions both run through here."""
    out = None
    for positions in token_budget_batches(tokens.lengths[rows], batch_tokens):
        output = forward(pad_rows(tokens, rows[positions], pad_id, pad_left))
        if out is None:
            out = np.empty((len(rows), output.shape[1]), dtype=np.float32)
        out[positions] = output
        if on_batch is not None:
            on_batch(len(positions))
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
