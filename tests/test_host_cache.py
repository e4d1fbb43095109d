"""The caching host allocator that NumPy array data comes from (csrc/core/host_cache.h)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fusegrad
from fusegrad import _C

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

BIG = 1 << 18  # float64 elements: 2 MiB, above the 128 KiB threshold


@pytest.fixture
def limit():
    """Restores the cache limit after a test changes it."""
    before = fusegrad.memory_stats()["limit_bytes"]
    yield lambda n: _C._alloc_set_limit(n)
    _C._alloc_set_limit(before)


def _addr(a):
    return a.__array_interface__["data"][0]


def test_enabled_on_import_for_large_and_small_arrays():
    st = fusegrad.memory_stats()
    assert st["enabled"] and st["limit_bytes"] == 1024 << 20
    assert get_handler_name() == "fusegrad_cache"
    assert get_handler_name(np.empty(3)) == "fusegrad_cache"
    assert get_handler_name(np.empty(BIG)) == "fusegrad_cache"
    assert get_handler_name(fusegrad.ops.relu_forward(np.ones(BIG, np.float32))) == "fusegrad_cache"


def test_a_freed_block_is_reused_for_the_same_size():
    fusegrad.empty_cache()  # a block of about this size cached by an earlier test could be taken instead
    a = np.empty(BIG)
    p = _addr(a)
    hits = fusegrad.memory_stats()["hits"]
    del a
    assert fusegrad.memory_stats()["cached_bytes"] >= BIG * 8
    b = np.empty(BIG)
    assert _addr(b) == p
    assert fusegrad.memory_stats()["hits"] == hits + 1
    # a slightly smaller request (within 1/8) takes the same block; a much smaller one does not
    del b
    c = np.empty(BIG - 1000)
    assert _addr(c) == p
    del c
    d = np.empty(BIG // 2)
    assert _addr(d) != p


def test_zeros_from_a_reused_dirty_block_are_zero():
    a = np.full(BIG, 7.0)
    p = _addr(a)
    del a
    z = np.zeros(BIG)
    assert _addr(z) == p
    assert not z.any()


@pytest.mark.parametrize("n0,n1", [(1000, BIG), (BIG, 3 * BIG), (3 * BIG, BIG), (BIG, 100), (BIG, BIG + 8)])
def test_resize_keeps_the_data(n0, n1):
    a = np.arange(n0, dtype=np.float64)
    a.resize(n1, refcheck=False)  # reallocates through the handler
    k = min(n0, n1)
    np.testing.assert_array_equal(a[:k], np.arange(k, dtype=np.float64))
    if n1 > n0:
        assert not a[n0:].any()  # ndarray.resize zero-fills the new tail


def test_limit_bounds_idle_memory_and_empty_cache_frees_it(limit):
    fusegrad.empty_cache()
    assert fusegrad.memory_stats()["cached_bytes"] == 0
    limit(3 * BIG * 8)
    arrays = [np.empty(BIG) for _ in range(5)]
    del arrays
    st = fusegrad.memory_stats()
    assert 0 < st["cached_bytes"] <= 3 * BIG * 8
    # a request larger than the limit bypasses the cache
    live = st["live_blocks"]
    big = np.empty(4 * BIG)
    assert fusegrad.memory_stats()["live_blocks"] == live
    del big
    fusegrad.empty_cache()
    assert fusegrad.memory_stats()["cached_bytes"] == fusegrad.memory_stats()["cached_blocks"] == 0
    limit(0)
    a = np.empty(BIG)
    del a
    assert fusegrad.memory_stats()["cached_bytes"] == 0
    with pytest.raises(ValueError, match="limit must be >= 0"):
        _C._alloc_set_limit(-1)


def test_a_full_cache_pushes_out_the_blocks_idle_longest(limit):
    fusegrad.empty_cache()
    limit(3 * BIG * 8)
    a = [np.empty(BIG) for _ in range(3)]
    addr = [_addr(x) for x in a]
    del a  # freed in order 0, 1, 2: the cache is full
    b = np.empty(BIG // 2 + 4096)  # another size: a miss, a fresh block
    del b  # in: block 0 (idle longest) goes out to make room
    st = fusegrad.memory_stats()
    assert st["cached_blocks"] == 3 and st["cached_bytes"] <= 3 * BIG * 8
    c = np.empty(BIG)
    assert _addr(c) in addr[1:]  # a hit on a block that stayed, not on the pushed-out one
    hits = fusegrad.memory_stats()["hits"]
    d = np.empty(BIG // 2 + 4096)  # the newest free is kept
    assert fusegrad.memory_stats()["hits"] == hits + 1
    del c, d


def test_arrays_outlive_switching_the_handler_off():
    a = np.arange(BIG, dtype=np.float64)
    live = fusegrad.memory_stats()["live_blocks"]
    try:
        assert _C._alloc_use_cache(False)
        assert not fusegrad.memory_stats()["enabled"]
        b = np.empty(BIG)
        assert get_handler_name(b) == "default_allocator"
        assert get_handler_name(a) == "fusegrad_cache"
        np.testing.assert_array_equal(a[-3:], [BIG - 3, BIG - 2, BIG - 1])
        del a, b  # a goes back through the handler that allocated it
        assert fusegrad.memory_stats()["live_blocks"] == live - 1
    finally:
        _C._alloc_use_cache(True)
    assert fusegrad.memory_stats()["enabled"]


def test_threads_allocate_and_free_concurrently():
    errors, handed = [], []

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            assert get_handler_name() == "default_allocator"  # a new thread starts a fresh context
            _C._alloc_use_cache(True)
            assert get_handler_name() == "fusegrad_cache"
            for i in range(200):
                n = int(r.integers(1 << 15, 1 << 19))
                a = np.full(n, float(seed))
                b = fusegrad.ops.relu_forward(np.full(n, float(seed), np.float32))
                if not (a == seed).all() or not (b == seed).all():
                    errors.append(seed)
                if i % 10 == 0:
                    handed.append(b)  # freed later by another thread
                elif handed:
                    try:
                        handed.pop()
                    except IndexError:
                        pass
        except Exception as e:  # reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    handed.clear()


def _child(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


def test_env_var_disables_or_sizes_the_cache():
    code = "import fusegrad; s = fusegrad.memory_stats(); print(s['enabled'], s['limit_bytes'])"
    r = _child(code, FUSEGRAD_HOST_CACHE_MB="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "0"]
    r = _child(code, FUSEGRAD_HOST_CACHE_MB="64")
    assert r.stdout.split() == ["True", str(64 << 20)]
    r = _child(code, FUSEGRAD_HOST_CACHE_MB="lots")
    assert r.returncode != 0 and "FUSEGRAD_HOST_CACHE_MB must be a number of MiB" in r.stderr


def test_fork_while_another_thread_holds_the_cache_lock():
    # The child of a fork must not inherit the cache's lock held by a thread that does not exist
    # there: its first large array would hang forever. (fork waits for the holder instead.)
    code = r"""
import os, sys
import numpy as np
import fusegrad
from fusegrad import _C
_C._alloc_test_hold_lock(0.3)
pid = os.fork()
if pid == 0:
    x = np.ones(1 << 16)
    os._exit(0 if float(x.sum()) == 65536.0 else 3)
_, status = os.waitpid(pid, 0)
print("ok" if status == 0 else f"child status {status}")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
