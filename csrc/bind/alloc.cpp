// NumPy array data from fusegrad's caching host allocator (core/host_cache.h).
//
// NumPy (>= 1.22, NEP 49) lets a library supply the allocator for array data: a
// PyDataMem_Handler in a "mem_handler" capsule, set per context with PyDataMem_SetHandler.
// Every array records the handler that allocated it and frees through it, so switching the
// handler on or off at any time is safe. We reach the two C-API functions through NumPy's
// exported API table (stable indices, the same mechanism NumPy's own headers use), so the
// build needs no NumPy headers.
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "bind/bind.h"
#include "bind/check.h"
#include "core/host_cache.h"

namespace fg::bind {

namespace {

// NumPy's ABI (numpy/ndarraytypes.h, version 1 of the struct).
struct DataMemAllocator {
  void* ctx;
  void* (*malloc)(void* ctx, size_t size);
  void* (*calloc)(void* ctx, size_t nelem, size_t elsize);
  void* (*realloc)(void* ctx, void* ptr, size_t new_size);
  void (*free)(void* ctx, void* ptr, size_t size);
};
struct DataMemHandler {
  char name[127];
  uint8_t version;
  DataMemAllocator allocator;
};

constexpr int kApiGetFeatureVersion = 211;  // PyArray_GetNDArrayCFeatureVersion
constexpr int kApiSetHandler = 304;         // PyDataMem_SetHandler (NumPy >= 1.22)
constexpr unsigned kFeature_1_22 = 0xf;      // NPY_1_22_API_VERSION

void* h_malloc(void*, size_t n) { return host_cache().allocate(n); }
void* h_calloc(void*, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return nullptr;
  return host_cache().allocate_zeroed(n * size);
}
void* h_realloc(void*, void* p, size_t n) { return host_cache().reallocate(p, n); }
void h_free(void*, void* p, size_t n) { host_cache().release(p, n); }

DataMemHandler* handler() {
  static DataMemHandler* h = [] {
    auto* x = new DataMemHandler{};
    std::strncpy(x->name, "fusegrad_cache", sizeof(x->name) - 1);
    x->version = 1;
    x->allocator = {nullptr, h_malloc, h_calloc, h_realloc, h_free};
    return x;
  }();
  return h;
}

void** numpy_api() {
  py::module_ mu;
  try {
    mu = py::module_::import("numpy._core._multiarray_umath");  // NumPy 2
  } catch (py::error_already_set&) {
    mu = py::module_::import("numpy.core._multiarray_umath");   // NumPy 1.x
  }
  py::object cap = mu.attr("_ARRAY_API");
  void* p = PyCapsule_GetPointer(cap.ptr(), nullptr);
  if (!p) throw py::error_already_set();
  return static_cast<void**>(p);
}

// Sets the current context's handler: ours (on) or NumPy's default (off). Returns whether
// NumPy supports handlers at all.
bool set_handler(bool on) {
  void** api = numpy_api();
  auto feature = reinterpret_cast<unsigned (*)()>(api[kApiGetFeatureVersion]);
  if (feature() < kFeature_1_22) return false;
  auto set = reinterpret_cast<PyObject* (*)(PyObject*)>(api[kApiSetHandler]);
  py::object cap;
  if (on) cap = py::reinterpret_steal<py::object>(PyCapsule_New(handler(), "mem_handler", nullptr));
  if (on && !cap) throw py::error_already_set();
  PyObject* old = set(on ? cap.ptr() : nullptr);  // NULL restores NumPy's default
  if (!old) throw py::error_already_set();
  Py_DECREF(old);
  return true;
}

}  // namespace

void bind_alloc(py::module_& m) {
  m.def("_alloc_use_cache", &set_handler, py::arg("enabled"),
        "Allocate NumPy array data (in the current context) from fusegrad's cache, or not.");
  m.def(
      "_alloc_set_limit",
      [](int64_t bytes) {
        if (bytes < 0) value_error(cat("set_cache_limit: limit must be >= 0, got ", bytes));
        host_cache().set_limit(static_cast<size_t>(bytes));
      },
      py::arg("bytes"));
  m.def("empty_cache", [] { host_cache().empty(); }, "Free the idle blocks of the host memory cache.");
  m.def(
      "_alloc_test_hold_lock",
      [](double seconds) {
        // Test hook: a thread that is not the caller holds the cache's lock for `seconds`
        // (how a fork can find it taken); returns once the thread has it.
        std::atomic<bool> held{false};
        std::thread([&held, seconds] {
          host_cache().lock_for_fork();
          held = true;
          std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
          host_cache().unlock_after_fork();
        }).detach();
        while (!held) std::this_thread::yield();
      },
      py::arg("seconds"));
  m.def("memory_stats", [] {
    const HostCacheStats s = host_cache().stats();
    py::dict d;
    d["cached_bytes"] = s.cached_bytes;
    d["cached_blocks"] = s.cached_blocks;
    d["limit_bytes"] = s.limit_bytes;
    d["live_bytes"] = s.live_bytes;
    d["live_blocks"] = s.live_blocks;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  });
}

}  // namespace fg::bind
