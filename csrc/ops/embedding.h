// Embedding lookup, forward and backward.
//   ids: (N,) int32/int64 in [0, V) (checked by the binding), table/dtable: (V, C), out/dout: (N, C).
// embedding_backward overwrites (=) dtable: zero, then dtable[ids[n]] += dout[n] in order of n
// (dtable_is_zero: the zeroing pass is skipped: the caller passes memory that is already zero,
// e.g. from calloc, so untouched rows stay untouched pages; or values to add the rows to).
// Threads split the C columns, so each element's sum order is fixed: same bits for any thread count.
#pragma once
#include <cstdint>

namespace fg {

template <typename T, typename I> void embedding_forward(T* out, const I* ids, const T* table, int64_t N, int64_t V, int64_t C);
template <typename T, typename I> void embedding_backward(T* dtable, const T* dout, const I* ids, int64_t N, int64_t V, int64_t C,
                                                 bool dtable_is_zero = false);

}  // namespace fg
