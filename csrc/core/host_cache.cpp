#include "core/host_cache.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fg {

namespace {
constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kHugeFrom = size_t{4} << 20;
}  // namespace

size_t HostCache::capacity_for(size_t bytes) {
  const size_t unit = bytes >= kHugeFrom ? kHuge : size_t{4096};
  return (bytes + unit - 1) / unit * unit;
}

void* HostCache::take_or_new(size_t bytes) {
  const size_t cap = capacity_for(bytes);
  {
    std::lock_guard<std::mutex> lk(m_);
    // The smallest idle block that fits, unless it is more than 1/8 too big.
    auto it = idle_.lower_bound(cap);
    if (it != idle_.end() && it->first <= cap + cap / 8) {
      void* p = it->second.p;
      const size_t got = it->first;
      drop_idle(it);
      live_.emplace(p, got);
      live_bytes_ += got;
      ++hits_;
      return p;
    }
    ++misses_;
  }
  void* p = nullptr;
  const size_t align = cap >= kHugeFrom ? kHuge : 64;
  if (posix_memalign(&p, align, cap) != 0) return nullptr;
#if defined(MADV_HUGEPAGE)
  if (align == kHuge) madvise(p, cap, MADV_HUGEPAGE);
#endif
  std::lock_guard<std::mutex> lk(m_);
  live_.emplace(p, cap);
  live_bytes_ += cap;
  return p;
}

void* HostCache::allocate(size_t bytes) {
  if (bytes < kMinBytes || bytes > limit_) return std::malloc(bytes ? bytes : 1);
  return take_or_new(bytes);
}

void* HostCache::allocate_zeroed(size_t bytes) {
  // Blocks beyond the limit keep calloc's lazily zeroed pages (a huge np.zeros stays cheap).
  if (bytes < kMinBytes || bytes > limit_) return std::calloc(bytes ? bytes : 1, 1);
  void* p = take_or_new(bytes);
  if (p) std::memset(p, 0, bytes);
  return p;
}

void* HostCache::reallocate(void* p, size_t bytes) {
  if (!p) return allocate(bytes);
  size_t cap = 0;
  {
    std::lock_guard<std::mutex> lk(m_);
    auto it = live_.find(p);
    if (it != live_.end()) cap = it->second;
  }
  if (cap == 0) return std::realloc(p, bytes ? bytes : 1);  // a plain malloc block stays one
  if (bytes >= kMinBytes && bytes <= cap) return p;         // shrinks in place
  void* q = bytes >= kMinBytes ? allocate(bytes) : std::malloc(bytes ? bytes : 1);
  if (!q) return nullptr;  // p stays valid, as realloc promises
  std::memcpy(q, p, bytes < cap ? bytes : cap);
  release(p, cap);
  return q;
}

void HostCache::drop_idle(IdleMap::iterator it) {
  idle_bytes_ -= it->first;
  lru_.erase(it->second.seq);
  idle_.erase(it);
}

void HostCache::release(void* p, size_t bytes) {
  if (!p) return;
  if (bytes < kMinBytes) {
    std::free(p);
    return;
  }
  std::vector<void*> evicted;
  bool kept = false;
  {
    std::lock_guard<std::mutex> lk(m_);
    auto it = live_.find(p);
    if (it != live_.end()) {
      const size_t cap = it->second;
      live_.erase(it);
      live_bytes_ -= cap;
      if (cap <= limit_) {
        // make room by pushing out the blocks idle longest (a training loop's shapes change
        // between phases, e.g. evaluation; the newest frees are the likeliest to be reused)
        while (idle_bytes_ + cap > limit_) {
          auto old = lru_.begin()->second;
          evicted.push_back(old->second.p);
          drop_idle(old);
        }
        const uint64_t seq = seq_++;
        lru_.emplace(seq, idle_.emplace(cap, Idle{p, seq}));
        idle_bytes_ += cap;
        kept = true;
      }
    }
  }
  for (void* q : evicted) std::free(q);
  if (!kept) std::free(p);
}

void HostCache::empty() {
  std::vector<void*> drop;
  {
    std::lock_guard<std::mutex> lk(m_);
    for (auto& kv : idle_) drop.push_back(kv.second.p);
    idle_.clear();
    lru_.clear();
    idle_bytes_ = 0;
  }
  for (void* p : drop) std::free(p);
}

void HostCache::set_limit(size_t bytes) {
  {
    std::lock_guard<std::mutex> lk(m_);
    limit_ = bytes;
    if (idle_bytes_ <= limit_) return;
  }
  empty();
}

HostCacheStats HostCache::stats() {
  std::lock_guard<std::mutex> lk(m_);
  HostCacheStats s;
  s.cached_bytes = idle_bytes_;
  s.cached_blocks = idle_.size();
  s.limit_bytes = limit_;
  s.live_bytes = live_bytes_;
  s.live_blocks = live_.size();
  s.hits = hits_;
  s.misses = misses_;
  return s;
}

HostCache& host_cache() {
  static HostCache* c = [] {
    auto* h = new HostCache(size_t{1} << 30);
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork([] { host_cache().lock_for_fork(); }, [] { host_cache().unlock_after_fork(); },
                   [] { host_cache().unlock_after_fork(); });
#endif
    return h;
  }();
  return *c;
}

}  // namespace fg
