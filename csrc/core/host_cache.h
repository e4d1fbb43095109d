// A caching allocator for large host buffers (the data of NumPy arrays, see bind/alloc.cpp).
//
// Why: a training step allocates the same large arrays every step (activations, gradients,
// kernel outputs) and frees them again. Large blocks come from fresh anonymous memory, so
// the OS zeroes every page on first touch and the allocator returns them on free (TLB
// shootdowns): for memory-bound kernels that costs as much as the kernel itself (measured:
// 20% of a small GPT training step). This cache keeps freed blocks of at least kMinBytes and
// hands them to the next request of (nearly) the same size, like PyTorch's caching
// allocator does for GPU memory. Idle memory is bounded by a limit: a block freed into a full
// cache pushes out the blocks that have been idle longest. empty() releases it all.
//
// Blocks of >= 4 MiB are 2 MiB aligned and asked for transparent huge pages. Thread-safe.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace fg {

struct HostCacheStats {
  size_t cached_bytes = 0, cached_blocks = 0, limit_bytes = 0;
  size_t live_bytes = 0, live_blocks = 0;  // large blocks handed out and not yet freed
  uint64_t hits = 0, misses = 0;
};

class HostCache {
 public:
  static constexpr size_t kMinBytes = size_t{128} << 10;  // below: plain malloc

  explicit HostCache(size_t limit_bytes) : limit_(limit_bytes) {}

  void* allocate(size_t bytes);
  void* allocate_zeroed(size_t bytes);
  void* reallocate(void* p, size_t bytes);
  // `bytes` is the size the block was last allocated (or reallocated) with.
  void release(void* p, size_t bytes);

  void empty();                    // free every idle block
  // fork(): the parent holds the lock across it, so the child never inherits it locked by a
  // thread that does not exist there (registered with pthread_atfork by host_cache()).
  void lock_for_fork() { m_.lock(); }
  void unlock_after_fork() { m_.unlock(); }
  void set_limit(size_t bytes);    // idle bytes kept at most (0: cache nothing)
  HostCacheStats stats();

 private:
  void* take_or_new(size_t bytes);
  static size_t capacity_for(size_t bytes);

  struct Idle {
    void* p;
    uint64_t seq;  // when it was freed
  };
  using IdleMap = std::multimap<size_t, Idle>;  // capacity -> block

  void drop_idle(IdleMap::iterator it);  // forget an idle entry (caller holds m_)

  std::mutex m_;
  IdleMap idle_;
  std::map<uint64_t, IdleMap::iterator> lru_;  // freed order: oldest first
  std::unordered_map<void*, size_t> live_;     // block -> capacity
  size_t limit_, idle_bytes_ = 0, live_bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0, seq_ = 0;
};

// The process-wide cache (never destroyed: arrays may outlive static destructors).
HostCache& host_cache();

}  // namespace fg
