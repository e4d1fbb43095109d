// Argument checks for the binding layer: one line per check, messages that name the
// function and the argument and say expected vs. actual, e.g.
//   layernorm_forward: weight must have shape (768,), got (512,)
// Shape/value problems raise ValueError, dtype problems TypeError. Kernels trust their
// arguments; everything a user can get wrong is caught here.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

namespace fg::bind {
namespace py = pybind11;

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] inline void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] inline void type_error(const std::string& msg) { throw py::type_error(msg); }

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << a.shape(i) << (a.ndim() == 1 || i + 1 < a.ndim() ? "," : "") << (i + 1 < a.ndim() ? " " : "");
  os << ")";
  return os.str();
}
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << s[i] << (s.size() == 1 || i + 1 < s.size() ? "," : "") << (i + 1 < s.size() ? " " : "");
  os << ")";
  return os.str();
}

enum class DType { f32, f64, i32, i64, other };

// The kernels read numbers in the machine's byte order; a byte-swapped array ('>f4' on x86)
// is "other", so it is refused instead of being read as garbage.
inline bool native_byte_order(const py::dtype& dt) {
  const char bo = dt.byteorder();
  if (bo == '=' || bo == '|') return true;
  const uint16_t one = 1;
  const bool little = *reinterpret_cast<const unsigned char*>(&one) == 1;
  return bo == (little ? '<' : '>');
}

inline DType dtype_of(const py::array& a) {
  const py::dtype dt = a.dtype();
  if (!native_byte_order(dt)) return DType::other;
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 8) return DType::f64;
  if (kind == 'i' && size == 4) return DType::i32;
  if (kind == 'i' && size == 8) return DType::i64;
  return DType::other;
}
inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The object must already be a numpy.ndarray (fusegrad.ops converts other array types).
inline py::array as_array(const py::handle& obj, const char* fn, const char* name) {
  if (!py::isinstance<py::array>(obj))
    type_error(cat(fn, ": ", name, " must be a numpy.ndarray, got ", py::str(py::type::of(obj).attr("__name__")).cast<std::string>()));
  return py::reinterpret_borrow<py::array>(obj);
}

// float32 or float64; returns which.
inline DType check_float(const py::array& a, const char* fn, const char* name) {
  DType d = dtype_of(a);
  if (d != DType::f32 && d != DType::f64)
    type_error(cat(fn, ": ", name, " must be float32 or float64, got ", dtype_str(a)));
  return d;
}
inline void check_dtype(const py::array& a, DType want, const char* fn, const char* name) {
  if (dtype_of(a) != want) {
    const char* w = want == DType::f32 ? "float32" : want == DType::f64 ? "float64" : want == DType::i32 ? "int32" : "int64";
    type_error(cat(fn, ": ", name, " must be ", w, " (the dtype of the other inputs), got ", dtype_str(a)));
  }
}
// Integer index arrays: int32 or int64.
inline DType check_index(const py::array& a, const char* fn, const char* name) {
  DType d = dtype_of(a);
  if (d != DType::i32 && d != DType::i64)
    type_error(cat(fn, ": ", name, " must be int32 or int64, got ", dtype_str(a)));
  return d;
}
inline void check_ndim(const py::array& a, py::ssize_t ndim, const char* fn, const char* name) {
  if (a.ndim() != ndim)
    value_error(cat(fn, ": ", name, " must have ", ndim, " dimensions, got ", a.ndim(), " with shape ", shape_str(a)));
}
inline void check_min_ndim(const py::array& a, py::ssize_t ndim, const char* fn, const char* name) {
  if (a.ndim() < ndim)
    value_error(cat(fn, ": ", name, " must have at least ", ndim, " dimension", ndim == 1 ? "" : "s", ", got shape ", shape_str(a)));
}
inline void check_aligned(const py::array& a, const char* fn, const char* name) {
  constexpr int kAligned = 0x0100;  // NPY_ARRAY_ALIGNED: the data pointer is a multiple of the item size
  if (a.size() > 0 && !(a.flags() & kAligned))
    value_error(cat(fn, ": ", name, " must be aligned to its dtype (numpy.require(", name,
                    ", requirements='CA') makes a copy that is), got an unaligned array"));
}
// C-contiguous and aligned: what a kernel taking a T* can read element by element.
inline void check_contiguous(const py::array& a, const char* fn, const char* name) {
  if (!(a.flags() & py::array::c_style))
    value_error(cat(fn, ": ", name, " must be C-contiguous (use numpy.ascontiguousarray), got strides that are not"));
  check_aligned(a, fn, name);
}
inline void check_writeable(const py::array& a, const char* fn, const char* name) {
  if (!a.writeable()) value_error(cat(fn, ": ", name, " must be writeable, got a read-only array"));
}
inline void check_shape(const py::array& a, const std::vector<int64_t>& want, const char* fn, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(i) == want[i];
  if (!ok) value_error(cat(fn, ": ", name, " must have shape ", shape_str(want), ", got ", shape_str(a)));
}
inline void check_same_shape(const py::array& a, const py::array& ref, const char* fn, const char* name, const char* ref_name) {
  bool ok = a.ndim() == ref.ndim();
  for (py::ssize_t i = 0; ok && i < a.ndim(); ++i) ok = a.shape(i) == ref.shape(i);
  if (!ok) value_error(cat(fn, ": ", name, " must have the shape of ", ref_name, " ", shape_str(ref), ", got ", shape_str(a)));
}
// Byte ranges of two arrays overlap (outputs must not alias inputs unless documented).
inline bool overlaps(const py::array& a, const py::array& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  auto pa = reinterpret_cast<uintptr_t>(a.data()), pb = reinterpret_cast<uintptr_t>(b.data());
  return pa < pb + static_cast<uintptr_t>(b.nbytes()) && pb < pa + static_cast<uintptr_t>(a.nbytes());
}
inline void check_no_alias(const py::array& out, const py::array& in, const char* fn, const char* out_name, const char* in_name) {
  if (overlaps(out, in)) value_error(cat(fn, ": ", out_name, " must not share memory with ", in_name));
}
// A float input for reading: right kind, contiguous. Returns its dtype.
inline DType float_input(const py::array& a, const char* fn, const char* name) {
  DType d = check_float(a, fn, name);
  check_contiguous(a, fn, name);
  return d;
}
// An output/in-place buffer: dtype, shape of ref, contiguous, writeable.
inline void check_out(const py::array& out, DType d, const py::array& ref, const char* fn, const char* name, const char* ref_name) {
  check_dtype(out, d, fn, name);
  check_same_shape(out, ref, fn, name, ref_name);
  check_contiguous(out, fn, name);
  check_writeable(out, fn, name);
}

inline std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}
// Product of all extents but the last (rows) and the last (cols); a 0-d array is one row of one.
inline int64_t rows_of(const py::array& a) {
  int64_t n = 1;
  for (py::ssize_t i = 0; i + 1 < a.ndim(); ++i) n *= a.shape(i);
  return n;
}
inline int64_t last_dim(const py::array& a) { return a.ndim() ? a.shape(a.ndim() - 1) : 1; }

template <typename T>
py::array_t<T> empty_like_shape(const std::vector<py::ssize_t>& shape) {
  return py::array_t<T>(shape);
}
template <typename T>
T* ptr(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <typename T>
const T* cptr(const py::array& a) { return static_cast<const T*>(a.data()); }

}  // namespace fg::bind

namespace fg::bind {
// Calls f(T{}) with T = float or double according to d (already checked to be f32/f64).
template <typename F>
decltype(auto) dispatch_float(DType d, F&& f) {
  if (d == DType::f64) return f(double{});
  return f(float{});
}
}  // namespace fg::bind
