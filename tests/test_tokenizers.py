"""Byte and BPE tokenizers: exact round trips, training, save/load, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fusegrad.tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer

TEXT = ("The cat sat on the mat. The cat ate the rat; the rat sat flat. "
        "Naïve café — 東京 🐈 1234567 tabs\tand\nnewlines  double  spaces.\n") * 20


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, vocab_size=300)


def test_byte_roundtrip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids.tolist() == list("héllo".encode())
    assert tok.decode(ids) == "héllo"


def test_bpe_learns_merges_and_compresses(bpe):
    assert bpe.vocab_size == 300
    ids = bpe.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) / 2
    assert bpe.decode(ids) == TEXT
    # the most frequent pair of this text merges first
    assert bpe.vocab[256] in (b"at", b" t", b"th", b"he", b"  ")


def test_bpe_merge_counts_match_brute_force():
    text = "aaabdaaabac"
    tok = BPETokenizer.train(text, vocab_size=259)
    # the classic example: aa is most frequent first
    assert tok.vocab[256] == b"aa"
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_bpe_roundtrips_any_bytes(bpe, data):
    assert bpe.decode_bytes(bpe.encode(data)) == data


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=100))
def test_bpe_roundtrips_any_text(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_save_load(tmp_path, bpe):
    p = tmp_path / "tok.json"
    bpe.save(p)
    tok = load_tokenizer(p)
    assert tok.merges == bpe.merges
    assert np.array_equal(tok.encode(TEXT), bpe.encode(TEXT))


def test_bad_input(tmp_path, bpe):
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(TypeError, match="text must be str or bytes"):
        bpe.encode(123)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 300\)"):
        bpe.decode([300])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a fusegrad tokenizer file"):
        load_tokenizer(bad)


def test_float_ids_and_vocab_sizes_are_refused_not_truncated(tmp_path, bpe):
    for tok in (ByteTokenizer(), bpe):
        with pytest.raises(TypeError, match="ids must be integers, got dtype float64"):
            tok.decode([104.7])                                   # would have decoded as 104
        assert tok.decode([]) == "" and tok.decode(np.array([104, 105], np.uint8)) == "hi"
    with pytest.raises(TypeError, match="vocab_size must be an integer"):
        BPETokenizer.train("abc", 300.5)
    with pytest.raises(TypeError, match="vocab_size must be an integer"):
        BPETokenizer.train("abc", True)


@pytest.mark.parametrize("merges", [[[1, 2, 3]], [["a", "b"]], [[1.0, 2.0]], [[256, 1]], 7, [[True, 1]]])
def test_load_refuses_malformed_merges(tmp_path, merges):
    p = tmp_path / "tok.json"
    p.write_text(json.dumps({"type": "bpe", "merges": merges}))
    with pytest.raises(ValueError, match="holds no valid BPE merges"):
        load_tokenizer(p)


def test_save_replaces_the_file_whole(tmp_path, bpe):
    p = tmp_path / "tok.json"
    ByteTokenizer().save(p)
    bpe.save(p)
    assert load_tokenizer(p).merges == bpe.merges
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tok.json"]     # no temporary left behind
