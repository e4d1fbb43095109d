"""The embedded default corpus: the Python standard library's own source files.

Every CPython installation ships its standard library as ``.py`` source, so a language model
can be trained with no download. The selection is deterministic for a given interpreter:
files under the stdlib directory (tests, site-packages and vendored packages excluded),
sorted by relative path, concatenated until ``max_bytes``.

>>> text = default_corpus(max_bytes=10_000)
>>> len(text.encode()) <= 10_000
True
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

_EXCLUDE_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                 "lib2to3", "ensurepip", "turtledemo", "tkinter", "idlelib", "pydoc_data"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[Path]:
    """The stdlib source files used for the corpus, in their fixed order."""
    root = Path(root) if root is not None else stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDE_DIRS and not d.startswith("test")]
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def default_corpus(max_bytes: int = 4_000_000, root: Path | None = None) -> str:
    """Concatenated stdlib sources, at most ``max_bytes`` of UTF-8, file by file."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    parts, total = [], 0
    for p in corpus_files(root):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        n = len(text.encode("utf-8"))
        if total + n > max_bytes:
            if not parts:  # keep at least a prefix of the first file
                parts.append(text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore"))
            break
        parts.append(text)
        total += n
    if not parts:
        raise RuntimeError(f"no Python source files found under {root or stdlib_dir()}")
    return "".join(parts)
