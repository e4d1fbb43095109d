"""The embedded default corpus is found on this interpreter and is deterministic."""
from fusegrad.corpus import corpus_files, default_corpus, stdlib_dir


def test_default_corpus_is_deterministic_and_sized():
    a = default_corpus(max_bytes=1_000_000)
    b = default_corpus(max_bytes=1_000_000)
    assert a == b
    assert 500_000 < len(a.encode()) <= 1_000_000
    assert "def " in a and "import " in a


def test_corpus_excludes_tests():
    files = corpus_files()
    root = stdlib_dir()
    assert files
    for p in files:
        parts = p.relative_to(root).parts
        assert not any(d.startswith("test") or d == "site-packages" for d in parts[:-1]), p


def test_tiny_budget_keeps_a_prefix():
    assert 0 < len(default_corpus(max_bytes=10).encode()) <= 10
