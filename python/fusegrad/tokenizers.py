"""Tokenizers: byte-level (256 symbols) and byte-level BPE.

Both round-trip any byte string exactly (``decode(encode(s)) == s``); text is encoded as
UTF-8. BPE training splits text into chunks (runs of letters, digits, punctuation and
whitespace, the usual GPT-2-style pre-split), counts the distinct chunks once, and then
performs merges on the distinct chunks only, keeping pair counts up to date incrementally,
so each merge touches only the chunks that contain the merged pair.

>>> tok = BPETokenizer.train("low lower lowest " * 50, vocab_size=260)
>>> tok.decode(tok.encode("lowest low"))
'lowest low'
"""
from __future__ import annotations

import heapq
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ._checks import is_int

# Letters (with an optional leading space), digits, other symbols, whitespace runs.
_SPLIT = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+|[\s\S]")


def _as_bytes(text) -> bytes:
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    if isinstance(text, str):
        return text.encode("utf-8", errors="surrogatepass")
    raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def _id_array(ids) -> np.ndarray:
    """Token ids as int64; floats are refused rather than truncated to a neighbouring id."""
    a = np.asarray(ids)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


class ByteTokenizer:
    """Each byte is a token: vocabulary of 256, ids are the byte values."""

    vocab_size = 256

    def encode(self, text) -> np.ndarray:
        return np.frombuffer(_as_bytes(text), dtype=np.uint8).astype(np.int64)

    def decode_bytes(self, ids) -> bytes:
        ids = _id_array(ids)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"ids must be in [0, 256), got values in [{ids.min()}, {ids.max()}]")
        return ids.astype(np.uint8).tobytes()

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path) -> None:
        _atomic_write_json(path, {"type": "byte"})


class BPETokenizer(ByteTokenizer):
    """Byte-level BPE: ids 0..255 are bytes, id 256+i is the i-th learned merge."""

    def __init__(self, merges: list[tuple[int, int]] | None = None):
        self.merges = []
        for m in merges or []:
            m = tuple(m)
            if len(m) != 2 or not all(is_int(i) for i in m):
                raise ValueError(f"a merge must be a pair of integer ids, got {m!r}")
            self.merges.append((int(m[0]), int(m[1])))
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(f"merge ({a}, {b}) refers to an id not yet defined")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._cache: dict[bytes, list[int]] = {}

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text, vocab_size: int, verbose: bool = False) -> "BPETokenizer":
        if not is_int(vocab_size):
            raise TypeError(f"vocab_size must be an integer, got {type(vocab_size).__name__} {vocab_size!r}")
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256, got {vocab_size}")
        data = _as_bytes(text).decode("utf-8", errors="surrogateescape")
        counts: dict[str, int] = defaultdict(int)
        for chunk in _SPLIT.findall(data):
            counts[chunk] += 1
        words = [list(w.encode("utf-8", errors="surrogateescape")) for w in counts]
        freq = list(counts.values())
        pair_count: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_count[p] += freq[wi]
                where[p].add(wi)
        # Max-heap of (-count, pair); stale entries are skipped when popped.
        heap = [(-c, p) for p, c in pair_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 256 and heap:
            negc, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -negc or negc == 0:
                continue
            new_id = 256 + len(merges)
            merges.append(pair)
            touched: dict[tuple[int, int], int] = defaultdict(int)
            for wi in where.pop(pair, ()):
                w, f = words[wi], freq[wi]
                for p in zip(w, w[1:]):
                    pair_count[p] -= f
                    touched[p] -= f
                out, i = [], 0
                while i < len(w):
                    if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                        out.append(new_id)
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                words[wi] = out
                for p in zip(out, out[1:]):
                    pair_count[p] += f
                    touched[p] += f
                    where[p].add(wi)
            pair_count.pop(pair, None)
            for p, delta in touched.items():
                if p != pair and delta > 0 and pair_count.get(p, 0) > 0:
                    heapq.heappush(heap, (-pair_count[p], p))
            if verbose and len(merges) % 500 == 0:
                print(f"bpe: {len(merges)} merges")
        return cls(merges)

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        ids = list(chunk)
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 62))
            new_id = self.ranks.get(best)
            if new_id is None:
                break
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == best[0] and ids[i + 1] == best[1]:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self._cache) < 1 << 18:
            self._cache[chunk] = ids
        return ids

    def encode(self, text) -> np.ndarray:
        data = _as_bytes(text).decode("utf-8", errors="surrogateescape")
        out: list[int] = []
        for chunk in _SPLIT.findall(data):
            out.extend(self._encode_chunk(chunk.encode("utf-8", errors="surrogateescape")))
        return np.array(out, dtype=np.int64)

    def decode_bytes(self, ids) -> bytes:
        ids = _id_array(ids).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got values in [{ids.min()}, {ids.max()}]")
        vocab = self.vocab
        return b"".join(vocab[i] for i in ids.tolist())

    def save(self, path) -> None:
        _atomic_write_json(path, {"type": "bpe", "merges": [list(m) for m in self.merges]})


def load_tokenizer(path) -> ByteTokenizer:
    """Load a tokenizer saved with ``save`` (JSON)."""
    try:
        obj = json.loads(Path(path).read_text())
        kind = obj["type"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"load_tokenizer: {path} is not a fusegrad tokenizer file ({e})") from None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        try:
            return BPETokenizer(obj["merges"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"load_tokenizer: {path} holds no valid BPE merges ({e})") from None
    raise ValueError(f"load_tokenizer: {path} has unknown tokenizer type {kind!r}")


def _atomic_write_json(path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj))
        f.flush()
        os.fsync(f.fileno())            # the data is on disk before the name points at it
    os.replace(tmp, path)
