// Output arrays whose memory is recycled between calls (used by bind/layernorm.cpp).
// A fresh large NumPy array is fresh anonymous memory: the kernel zeroes every page on first
// touch, which costs as much as the op itself for memory-bound kernels (28% of layernorm
// fwd+bwd time at 256 x 50304 measured with perf: clear_page). Blocks of >= 1 MiB are kept
// when their array dies and handed to the next output of exactly the same size (training
// loops repeat the same shapes), up to kMaxFree bytes of idle blocks; anything beyond is freed.
// Big blocks are 2 MiB aligned and asked for transparent huge pages (as NumPy does).
#pragma once
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include <pybind11/numpy.h>

#include "bind/bind.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fg::bind {

class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t{1} << 20;
  static constexpr size_t kMaxFree = size_t{256} << 20;

  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lk(m_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        free_bytes_ -= bytes;
        return p;
      }
    }
    const size_t huge = size_t{2} << 20;
    const size_t align = bytes >= huge ? huge : 64;
    void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == huge) madvise(p, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
    return p;
  }

  void put(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (free_bytes_ + bytes <= kMaxFree) {
        free_.emplace(bytes, p);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  size_t free_bytes_ = 0;
};

inline BlockCache& block_cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: arrays may outlive static destructors
  return *c;
}

// An uninitialized C-contiguous array of the given shape; large ones come from block_cache().
template <typename T>
py::array cached_empty(const std::vector<py::ssize_t>& shape) {
  size_t n = 1;
  for (py::ssize_t s : shape) n *= static_cast<size_t>(s);
  const size_t bytes = n * sizeof(T);
  if (bytes < BlockCache::kMinBytes) return py::array_t<T>(shape);
  struct Block {
    void* p;
    size_t bytes;
  };
  auto* blk = new Block{block_cache().get(bytes), bytes};
  py::capsule owner(blk, [](void* v) {
    auto* b = static_cast<Block*>(v);
    block_cache().put(b->p, b->bytes);
    delete b;
  });
  return py::array_t<T>(shape, static_cast<T*>(blk->p), owner);
}

}  // namespace fg::bind
