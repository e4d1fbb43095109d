// Kernel entries that take torch.Tensor objects directly (_C._torch_*, underscored: fusegrad.torch's eager
// path, not part of fusegrad.ops).
//
// No libtorch is linked: a tensor is read through its Python attributes (dtype, is_cpu,
// is_contiguous(), shape, data_ptr()) with the C API and interned names, ~0.3 us a tensor, where
// a NumPy view (numpy(force=True)) costs ~0.9 us and pybind11's array checks come on top. Output
// memory comes from fusegrad's host cache and reaches torch as a DLPack capsule
// (torch._C._from_dlpack), the cheapest way to a tensor measured: ~0.4 us, where a NumPy array +
// torch.from_numpy costs ~0.9 us and torch.empty ~1.4 us (the custom-op path's layer-norm mean and
// rstd stay NumPy arrays). Everything the NumPy
// entries check is checked here too, naming the function and the argument: the type (a torch
// tensor, or a NumPy array where noted), the dtype (TypeError), the device, contiguity, alignment,
// shapes (ValueError), and that the tensor has memory (a fake or meta tensor has none). The
// caller's references keep every input alive for the call; outputs are new memory, never aliased.
#include <Python.h>

#include <algorithm>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bind/bind.h"
#include "bind/check.h"
#include "core/host_cache.h"
#include "ops/activations.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"

namespace fg::bind {

namespace {

// torch's objects and the attribute names, looked up once (torch is imported on first use: it is
// never a dependency of fusegrad._C itself). Held for the life of the process.
struct TorchRefs {
  PyObject *tensor, *f32, *f64, *i32, *i64;
  PyObject *s_dtype, *s_is_cpu, *s_is_contiguous, *s_shape, *s_data_ptr, *s_device;
  PyObject* from_dlpack;       // torch._C._from_dlpack (torch >= 1.10)
  PyObject* is_grad_enabled;   // torch.is_grad_enabled
};

const TorchRefs& torch_refs() {
  static const TorchRefs r = [] {
    py::module_ torch = py::module_::import("torch");
    auto keep = [](py::object o) { return o.release().ptr(); };
    auto name = [](const char* s) { return PyUnicode_InternFromString(s); };
    return TorchRefs{keep(torch.attr("Tensor")), keep(torch.attr("float32")), keep(torch.attr("float64")),
                     keep(torch.attr("int32")), keep(torch.attr("int64")),
                     name("dtype"), name("is_cpu"), name("is_contiguous"), name("shape"), name("data_ptr"),
                     name("device"), keep(torch.attr("_C").attr("_from_dlpack")),
                     keep(torch.attr("is_grad_enabled"))};
  }();
  return r;
}

py::object get(PyObject* o, PyObject* attr) {
  PyObject* r = PyObject_GetAttr(o, attr);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}
py::object call0(PyObject* o, PyObject* method) {
  PyObject* r = PyObject_CallMethodNoArgs(o, method);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// One input: its memory, shape and dtype, from a torch.Tensor (or, where allowed, a NumPy array).
struct Arg {
  const void* data = nullptr;
  std::vector<int64_t> shape;
  DType d = DType::other;
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  int64_t rows() const {  // all extents but the last
    int64_t n = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
  }
  int64_t last() const { return shape.empty() ? 1 : shape.back(); }
};

std::string type_name(py::handle o) { return py::str(py::type::of(o).attr("__name__")).cast<std::string>(); }
const char* dtype_name(DType d) {
  return d == DType::f32 ? "float32" : d == DType::f64 ? "float64" : d == DType::i32 ? "int32" : "int64";
}

// A contiguous CPU tensor (numpy_ok: or a C-contiguous NumPy array, as the saved statistics are).
// What probe() found wrong first (ok: nothing).
enum class Probe { ok, error, dtype, device, strides, memory, unaligned };

// Reads a tensor's dtype, device, contiguity, shape and data pointer into a, in that order, and
// returns the first check that fails (error: an attribute lookup raised, the Python error is left
// set). Never raises: read() turns a failure into its message, peek() into "not this path".
Probe probe(PyObject* o, Arg& a) {
  const TorchRefs& r = torch_refs();
  auto attr = [&](PyObject* name) { return py::reinterpret_steal<py::object>(PyObject_GetAttr(o, name)); };
  py::object dt = attr(r.s_dtype);
  if (!dt) return Probe::error;
  a.d = dt.ptr() == r.f32 ? DType::f32 : dt.ptr() == r.f64 ? DType::f64 : dt.ptr() == r.i64 ? DType::i64
      : dt.ptr() == r.i32 ? DType::i32 : DType::other;
  if (a.d == DType::other) return Probe::dtype;
  py::object cpu = attr(r.s_is_cpu);
  if (!cpu) return Probe::error;
  if (cpu.ptr() != Py_True) return Probe::device;
  py::object contig = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(o, r.s_is_contiguous));
  if (!contig) return Probe::error;
  if (contig.ptr() != Py_True) return Probe::strides;
  py::object shape = attr(r.s_shape);
  if (!shape) return Probe::error;
  if (!PyTuple_Check(shape.ptr())) return Probe::memory;  // (not a torch.Size: not a tensor we can read)
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape.ptr());
  a.shape.resize(nd);
  for (Py_ssize_t i = 0; i < nd; ++i) a.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
  // fake, meta and functional tensors have no memory to read: data_ptr() raises or returns 0
  PyObject* p = PyObject_CallMethodNoArgs(o, r.s_data_ptr);
  a.data = p ? PyLong_AsVoidPtr(p) : nullptr;
  Py_XDECREF(p);
  if (!p || PyErr_Occurred() || (a.data == nullptr && a.numel() > 0)) {
    PyErr_Clear();
    return Probe::memory;
  }
  const auto item = a.d == DType::f64 || a.d == DType::i64 ? 8u : 4u;
  return reinterpret_cast<uintptr_t>(a.data) % item ? Probe::unaligned : Probe::ok;
}

Arg read(py::handle o, const char* fn, const char* name, bool numpy_ok = false) {
  const TorchRefs& r = torch_refs();
  Arg a;
  if (numpy_ok && py::isinstance<py::array>(o)) {
    py::array x = py::reinterpret_borrow<py::array>(o);
    a.d = dtype_of(x);
    check_contiguous(x, fn, name);
    a.shape.assign(x.shape(), x.shape() + x.ndim());
    a.data = x.data();
    return a;
  }
  const int is = PyObject_IsInstance(o.ptr(), r.tensor);
  if (is < 0) throw py::error_already_set();
  if (!is) type_error(cat(fn, ": ", name, " must be a torch.Tensor", numpy_ok ? " or a numpy.ndarray" : "", ", got ",
                          type_name(o)));
  switch (probe(o.ptr(), a)) {
    case Probe::ok:
      return a;
    case Probe::error:
      throw py::error_already_set();
    case Probe::dtype:
      type_error(cat(fn, ": ", name, " has dtype ", py::str(get(o.ptr(), r.s_dtype)).cast<std::string>(),
                     "; these kernels take float32/float64 (int64/int32 indices)"));
    case Probe::device:
      value_error(cat(fn, ": ", name, " must be a CPU tensor, got one on ",
                      py::str(get(o.ptr(), r.s_device)).cast<std::string>()));
    case Probe::strides:
      value_error(cat(fn, ": ", name, " must be contiguous (call .contiguous() on it), got strides ",
                      py::str(py::handle(o).attr("stride")()).cast<std::string>()));
    case Probe::memory:
      value_error(cat(fn, ": ", name, " has no memory to read (a fake, meta or functional tensor? got ", type_name(o),
                      "); the torch.library custom ops (torch.ops.fusegrad.*) take those"));
    case Probe::unaligned:
      value_error(cat(fn, ": ", name, " must be aligned to its dtype, got an unaligned tensor"));
  }
  return a;
}

// None, or a contiguous (C,) tensor of dtype d.
Arg read_param(py::handle o, DType d, int64_t C, const char* fn, const char* name) {
  Arg a;
  if (o.is_none()) return a;
  a = read(o, fn, name);
  if (a.d != d) type_error(cat(fn, ": ", name, " must be ", dtype_name(d), " (the dtype of x), got ", dtype_name(a.d)));
  if (a.shape.size() != 1 || a.shape[0] != C)
    value_error(cat(fn, ": ", name, " must have shape (", C, ",), got ", shape_str(a.shape)));
  return a;
}

DType float_arg(const Arg& a, const char* fn, const char* name) {
  if (a.d != DType::f32 && a.d != DType::f64)
    type_error(cat(fn, ": ", name, " must be float32 or float64, got ", dtype_name(a.d)));
  return a.d;
}
void same_dtype(const Arg& a, DType d, const char* fn, const char* name) {
  if (a.d != d) type_error(cat(fn, ": ", name, " must be ", dtype_name(d), " (the dtype of the other inputs), got ",
                               dtype_name(a.d)));
}
void want_shape(const Arg& a, const std::vector<int64_t>& want, const char* fn, const char* name) {
  if (a.shape != want) value_error(cat(fn, ": ", name, " must have shape ", shape_str(want), ", got ", shape_str(a.shape)));
}

template <typename T>
const T* p(const Arg& a) { return static_cast<const T*>(a.data); }

// A new NumPy array (fusegrad's host cache), for what stays NumPy (a forward's statistics).
template <typename T>
py::array alloc(const std::vector<int64_t>& shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// DLPack's C ABI (the "dltensor" capsule of the DLPack spec, version 0.x, which every torch since
// 1.10 takes), declared here: only what an owned, contiguous CPU float tensor needs.
namespace dl {
struct Device { int32_t type, id; };                  // type 1: CPU
struct DataType { uint8_t code, bits; uint16_t lanes; };  // code 2: float
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t *shape, *strides;
  uint64_t byte_offset;
};
struct Managed {
  Tensor t;
  void* ctx;
  void (*deleter)(Managed*);
};
}  // namespace dl

// An output's memory from the host cache, its shape and strides, and the DLPack struct over
// them: freed by torch through the deleter once the tensor's storage dies (on any thread: the
// cache is thread-safe and needs no GIL), or by ~Out if it never reached torch.
struct HostTensor {
  dl::Managed m{};
  size_t bytes = 0;
  std::vector<int64_t> dims;  // shape, then strides
};
void host_tensor_free(dl::Managed* m) {
  auto* h = static_cast<HostTensor*>(m->ctx);
  host_cache().release(h->m.t.data, h->bytes);
  delete h;
}
void dltensor_capsule_free(PyObject* cap) {  // a capsule torch did not consume (renamed) frees its tensor
  if (PyCapsule_IsValid(cap, "dltensor"))
    if (auto* m = static_cast<dl::Managed*>(PyCapsule_GetPointer(cap, "dltensor"))) m->deleter(m);
}

// A contiguous output tensor of T: data() to write, then tensor() (once) hands it to torch.
template <typename T>
class Out {
 public:
  explicit Out(const std::vector<int64_t>& shape) : h_(new HostTensor) {
    const auto nd = static_cast<int32_t>(shape.size());
    size_t n = 1;
    for (int64_t e : shape) n *= static_cast<size_t>(e);
    h_->dims.resize(2 * static_cast<size_t>(nd));
    int64_t stride = 1;
    for (int32_t i = nd - 1; i >= 0; --i) {
      h_->dims[i] = shape[i];
      h_->dims[nd + i] = stride;
      stride *= std::max<int64_t>(shape[i], 1);
    }
    h_->bytes = n * sizeof(T);
    void* p = host_cache().allocate(h_->bytes);
    if (!p) {
      delete h_;
      throw std::bad_alloc();
    }
    h_->m.t = dl::Tensor{p, {1, 0}, nd, {2, uint8_t(8 * sizeof(T)), 1}, h_->dims.data(), h_->dims.data() + nd, 0};
    h_->m.ctx = h_;
    h_->m.deleter = host_tensor_free;
  }
  Out(const Out&) = delete;
  Out& operator=(const Out&) = delete;
  ~Out() {
    if (h_) host_tensor_free(&h_->m);
  }
  T* data() const { return static_cast<T*>(h_->m.t.data); }
  py::object tensor() {
    HostTensor* h = std::exchange(h_, nullptr);
    PyObject* cap = PyCapsule_New(&h->m, "dltensor", dltensor_capsule_free);
    if (!cap) {
      host_tensor_free(&h->m);
      throw py::error_already_set();
    }
    PyObject* t = PyObject_CallOneArg(torch_refs().from_dlpack, cap);
    Py_DECREF(cap);  // consumed: torch owns the memory; else the capsule's destructor freed it
    if (!t) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(t);
  }

 private:
  HostTensor* h_;
};

// ---------------------------------------------------------------- layer norm
// Runs the forward on checked arguments: y as a tensor; mean and rstd into stats (2 x rows values
// of x's dtype: all means, then all rstds).
py::object layernorm_run(const Arg& x, const Arg& w, const Arg& b, double eps, void* stats) {
  const int64_t N = x.rows(), C = x.last();
  return dispatch_float(x.d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Out<T> y(x.shape);
    T *py_ = y.data(), *pm = static_cast<T*>(stats);
    {
      py::gil_scoped_release nogil;
      layernorm_forward<T>(py_, pm, pm + N, p<T>(x), p<T>(w), p<T>(b), N, C, eps);
    }
    return y.tensor();
  });
}

// The statistics a training forward keeps for its backward (ctx.stats): a capsule owning 2 x rows
// values of dtype d from the host cache. Not a NumPy array: nothing reads them but the backward,
// and a capsule costs less per call.
struct LnStats {
  void* data;
  size_t bytes;
  int64_t rows;
  DType d;
};
constexpr const char* kLnStats = "fusegrad.layer_norm_stats";
void ln_stats_free(PyObject* cap) {
  if (auto* st = static_cast<LnStats*>(PyCapsule_GetPointer(cap, kLnStats))) {
    host_cache().release(st->data, st->bytes);
    delete st;
  } else {
    PyErr_Clear();
  }
}
py::object ln_stats_new(int64_t rows, DType d, void** data) {
  const size_t bytes = 2 * static_cast<size_t>(rows) * (d == DType::f64 ? 8 : 4);
  void* p = host_cache().allocate(bytes);
  if (!p) throw std::bad_alloc();
  auto* st = new LnStats{p, bytes, rows, d};
  PyObject* cap = PyCapsule_New(st, kLnStats, ln_stats_free);
  if (!cap) {
    host_cache().release(p, bytes);
    delete st;
    throw py::error_already_set();
  }
  *data = p;
  return py::reinterpret_steal<py::object>(cap);
}

// The checked arguments of a layer_norm forward (x, weight, bias), naming fn and the argument.
struct LayerNormArgs {
  Arg x, w, b;
};
LayerNormArgs layernorm_args(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps, const char* fn) {
  LayerNormArgs a;
  a.x = read(x_obj, fn, "x");
  const DType d = float_arg(a.x, fn, "x");
  if (a.x.shape.empty()) value_error(cat(fn, ": x must have at least 1 dimension, got shape ()"));
  const int64_t C = a.x.last();
  if (C < 1) value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(a.x.shape)));
  if (!(eps >= 0)) value_error(cat(fn, ": eps must be >= 0, got ", eps));
  a.w = read_param(w_obj, d, C, fn, "weight");
  a.b = read_param(b_obj, d, C, fn, "bias");
  return a;
}

py::tuple layernorm_fwd(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  const LayerNormArgs a = layernorm_args(x_obj, w_obj, b_obj, eps, "_torch_layernorm_forward");
  std::vector<int64_t> ss{2};
  ss.insert(ss.end(), a.x.shape.begin(), a.x.shape.end() - 1);
  py::array stats = dispatch_float(a.x.d, [&](auto tag) -> py::array { return alloc<decltype(tag)>(ss); });
  py::object y = layernorm_run(a.x, a.w, a.b, eps, stats.mutable_data());
  return py::make_tuple(y, stats[py::int_(0)], stats[py::int_(1)]);
}

// The checked x, dy and weight of a layer_norm backward.
struct LayerNormBwdArgs {
  Arg x, dy, w;
};
LayerNormBwdArgs layernorm_bwd_args(py::handle dy_obj, py::handle x_obj, py::handle w_obj, const char* fn) {
  LayerNormBwdArgs a;
  a.x = read(x_obj, fn, "x");
  const DType d = float_arg(a.x, fn, "x");
  if (a.x.shape.empty() || a.x.last() < 1)
    value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(a.x.shape)));
  a.dy = read(dy_obj, fn, "dy");
  same_dtype(a.dy, d, fn, "dy");
  want_shape(a.dy, a.x.shape, fn, "dy");
  a.w = read_param(w_obj, d, a.x.last(), fn, "weight");
  return a;
}

// (dx, dweight, dbias) from checked arguments and the forward's statistics (rows each).
py::tuple layernorm_bwd_run(const LayerNormBwdArgs& a, const void* mean, const void* rstd) {
  const int64_t N = a.x.rows(), C = a.x.last();
  return dispatch_float(a.x.d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    Out<T> dx(a.x.shape), dw({C}), db({C});
    T *pdx = dx.data(), *pdw = dw.data(), *pdb = db.data();
    {
      py::gil_scoped_release nogil;
      layernorm_backward<T>(pdx, pdw, pdb, p<T>(a.dy), p<T>(a.x), p<T>(a.w), static_cast<const T*>(mean),
                            static_cast<const T*>(rstd), N, C);
    }
    return py::make_tuple(dx.tensor(), dw.tensor(), db.tensor());
  });
}

py::tuple layernorm_bwd(py::handle dy_obj, py::handle x_obj, py::handle w_obj, py::handle mean_obj,
                        py::handle rstd_obj) {
  const char* fn = "_torch_layernorm_backward";
  const LayerNormBwdArgs a = layernorm_bwd_args(dy_obj, x_obj, w_obj, fn);
  const std::vector<int64_t> rs(a.x.shape.begin(), a.x.shape.end() - 1);
  Arg mean = read(mean_obj, fn, "mean", true), rstd = read(rstd_obj, fn, "rstd", true);
  same_dtype(mean, a.x.d, fn, "mean");
  want_shape(mean, rs, fn, "mean");
  same_dtype(rstd, a.x.d, fn, "rstd");
  want_shape(rstd, rs, fn, "rstd");
  return layernorm_bwd_run(a, mean.data, rstd.data);
}

// ---------------------------------------------------------------- linear
// x: (..., IN), w: (OUT, IN), b: (OUT,) or None -> y: (..., OUT)
// x (..., IN) and weight (OUT, IN) of one float dtype; returns y's shape (..., OUT).
std::vector<int64_t> linear_shapes(const Arg& x, const Arg& w, const char* fn) {
  const DType d = float_arg(x, fn, "x");
  same_dtype(w, d, fn, "weight");
  if (x.shape.empty()) value_error(cat(fn, ": x must have at least 1 dimension, got shape ()"));
  if (w.shape.size() != 2 || w.shape[1] != x.last())
    value_error(cat(fn, ": weight must have shape (out_features, ", x.last(), ") to match x ", shape_str(x.shape),
                    ", got ", shape_str(w.shape)));
  std::vector<int64_t> ys = x.shape;
  ys.back() = w.shape[0];
  return ys;
}

// The checked x, weight and bias of a linear forward.
struct LinearArgs {
  Arg x, w, b;
};
LinearArgs linear_args(py::handle x_obj, py::handle w_obj, py::handle b_obj, const char* fn) {
  LinearArgs a;
  a.x = read(x_obj, fn, "x");
  a.w = read(w_obj, fn, "weight");
  linear_shapes(a.x, a.w, fn);
  a.b = read_param(b_obj, a.x.d, a.w.shape[0], fn, "bias");
  return a;
}

// y (..., OUT) = x w^T + b on checked arguments.
py::object linear_run(const Arg& x, const Arg& w, const Arg& b) {
  const int64_t IN = x.last(), N = x.rows(), OUT = w.shape[0];
  std::vector<int64_t> ys = x.shape;
  ys.back() = OUT;
  return dispatch_float(x.d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Out<T> y(ys);
    T* py_ = y.data();
    {
      py::gil_scoped_release nogil;
      linear_forward<T>(py_, p<T>(x), p<T>(w), p<T>(b), N, IN, OUT, nullptr);
    }
    return y.tensor();
  });
}

py::object linear_fwd(py::handle x_obj, py::handle w_obj, py::handle b_obj) {
  const LinearArgs a = linear_args(x_obj, w_obj, b_obj, "_torch_linear_forward");
  return linear_run(a.x, a.w, a.b);
}

// dy: (..., OUT), x: (..., IN), w: (OUT, IN) -> (dx: x's shape, dw: (OUT, IN), db: (OUT,))
py::tuple linear_bwd(py::handle dy_obj, py::handle x_obj, py::handle w_obj) {
  const char* fn = "_torch_linear_backward";
  Arg x = read(x_obj, fn, "x"), w = read(w_obj, fn, "weight"), dy = read(dy_obj, fn, "dy");
  const std::vector<int64_t> dys = linear_shapes(x, w, fn);
  const DType d = x.d;
  same_dtype(dy, d, fn, "dy");
  want_shape(dy, dys, fn, "dy");
  const int64_t IN = x.last(), N = x.rows(), OUT = w.shape[0];
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    Out<T> dx(x.shape), dw(w.shape), db({OUT});
    T *pdx = dx.data(), *pdw = dw.data(), *pdb = db.data();
    {
      py::gil_scoped_release nogil;
      linear_backward<T>(pdx, pdw, pdb, p<T>(dy), p<T>(x), p<T>(w), N, IN, OUT);
    }
    return py::make_tuple(dx.tensor(), dw.tensor(), db.tensor());
  });
}

// ---------------------------------------------------------------- gelu
bool tanh_form(const std::string& approximate, const char* fn) {
  if (approximate == "none") return false;
  if (approximate == "tanh") return true;
  value_error(cat(fn, ": approximate must be 'none' or 'tanh', got '", approximate, "'"));
}

// y = gelu(x) on a checked float x (t: the tanh form).
py::object gelu_run(const Arg& x, bool t) {
  return dispatch_float(x.d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Out<T> y(x.shape);
    T* py_ = y.data();
    {
      py::gil_scoped_release nogil;
      gelu_forward<T>(py_, p<T>(x), x.numel(), t);
    }
    return y.tensor();
  });
}

py::object gelu_fwd(py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_forward";
  const bool t = tanh_form(approximate, fn);
  Arg x = read(x_obj, fn, "x");
  float_arg(x, fn, "x");
  return gelu_run(x, t);
}

// dx = kernel(dy, a) elementwise, a the forward's x or the saved gelu'(x): the checks and the call
template <typename K>
py::object unary_bwd(py::handle dy_obj, py::handle a_obj, const char* fn, const char* aname, K kernel) {
  Arg a = read(a_obj, fn, aname), dy = read(dy_obj, fn, "dy");
  const DType d = float_arg(a, fn, aname);
  same_dtype(dy, d, fn, "dy");
  want_shape(dy, a.shape, fn, "dy");
  return dispatch_float(d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    Out<T> dx(a.shape);
    T* pdx = dx.data();
    {
      py::gil_scoped_release nogil;
      kernel(pdx, p<T>(dy), p<T>(a), a.numel());
    }
    return dx.tensor();
  });
}

py::object gelu_bwd(py::handle dy_obj, py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_backward";
  const bool t = tanh_form(approximate, fn);
  return unary_bwd(dy_obj, x_obj, fn, "x", [t](auto* dx, const auto* dy, const auto* x, int64_t n) {
    gelu_backward(dx, dy, x, n, t);
  });
}

// (y, dydx) of gelu_forward_with_grad on a checked float x, for fusegrad.torch's eager autograd
// (which saves dydx, not x)
py::tuple gelu_grad_run(const Arg& x, bool t) {
  return dispatch_float(x.d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    Out<T> y(x.shape), dydx(x.shape);
    T *py_ = y.data(), *pd = dydx.data();
    {
      py::gil_scoped_release nogil;
      gelu_forward_with_grad<T>(py_, pd, p<T>(x), x.numel(), t);
    }
    return py::make_tuple(y.tensor(), dydx.tensor());
  });
}

py::object gelu_fwd_grad(py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_forward_with_grad";
  const bool t = tanh_form(approximate, fn);
  Arg x = read(x_obj, fn, "x");
  float_arg(x, fn, "x");
  return gelu_grad_run(x, t);
}

py::object gelu_bwd_grad(py::handle dy_obj, py::handle dydx_obj) {
  return unary_bwd(dy_obj, dydx_obj, "_torch_gelu_backward_from_grad", "dydx",
                   [](auto* dx, const auto* dy, const auto* d, int64_t n) { gelu_backward_from_grad(dx, dy, d, n); });
}

// ---------------------------------------------------------------- eager fast paths
// fusegrad.torch's common eager calls of layer_norm, gelu and linear, each in one C++ call: plain
// CPU tensors (torch.Tensor or nn.Parameter exactly, contiguous, float32/float64, one dtype) in the
// shapes the kernels take. Everything fusegrad.torch's Python path decides for such a call is
// decided here, from the state that path keeps (registered once by _torch_fast_setup, the policy
// pushed again on every change by _torch_fast_policy): the policy's choice for the size bucket
// (PyTorch's original op, or ours), the dispatch count, then our kernel alone (no gradient needed)
// or the op's autograd Function, whose forward and backward are the C++ functions below and take
// the arguments this call has read (a per-thread stash) instead of reading them again. Any other
// call (a subclass or fake tensor, another device or dtype, strides, shapes that do not match,
// functorch transforms, autocast for linear) returns None and the Python path takes it, so
// behaviour, errors and fallback counts stay that path's. Why: the Python path reads the same
// attributes through ~40 interpreted steps (~3 us a call, quiet Zen 4); this reads each once.
enum FastOp { kLayerNorm, kGelu, kGeluTanh, kLinear, kFastOps };
constexpr const char* kFastOpNames[kFastOps] = {"layer_norm", "gelu", "gelu_tanh", "linear"};

struct FastState {
  PyObject* parameter = nullptr;         // torch.nn.Parameter (torch.Tensor is in TorchRefs)
  PyObject* functorch_active = nullptr;  // torch._C._are_functorch_transforms_active
  PyObject* autocast_cpu = nullptr;      // () -> torch.is_autocast_enabled("cpu")
  PyObject* module_dict = nullptr;       // fusegrad.torch's globals(): its dispatch_counts is looked up per call
  PyObject* s_counts = nullptr;          // "dispatch_counts" (a Counter, which a user may also replace)
  PyObject* s_requires_grad = nullptr;
  PyObject* kw_approximate = nullptr;    // ("approximate",): F.gelu takes it by keyword only
  struct Op {
    PyObject *apply = nullptr, *original = nullptr, *key_torch = nullptr, *key_ours = nullptr;
    uint8_t ours[2][64] = {};  // [float32, float64][floor(log2(size))]: 1 = fusegrad's kernel
  } op[kFastOps];
  bool ready = false;
};
FastState& fast() {
  static FastState f;
  return f;
}

// A plain (torch.Tensor or nn.Parameter exactly), contiguous CPU float tensor with memory (never
// raises): its Arg, or false; grad |= its requires_grad.
bool peek(PyObject* o, Arg& a, bool& grad) {
  const FastState& f = fast();
  PyObject* t = reinterpret_cast<PyObject*>(Py_TYPE(o));
  if (t != torch_refs().tensor && t != f.parameter) return false;
  if (probe(o, a) != Probe::ok || (a.d != DType::f32 && a.d != DType::f64) || a.data == nullptr) {
    PyErr_Clear();  // (a failed getattr: the Python path reports it)
    return false;
  }
  PyObject* rg = PyObject_GetAttr(o, f.s_requires_grad);
  if (!rg) {
    PyErr_Clear();
    return false;
  }
  grad = grad || rg == Py_True;
  Py_DECREF(rg);
  return true;
}

// weight / bias of a fast call: None, or a plain tensor of dtype d and shape (n,)
bool peek_param(py::handle o, Arg& a, DType d, int64_t n, bool& grad) {
  return o.is_none() || (peek(o.ptr(), a, grad) && a.d == d && a.shape.size() == 1 && a.shape[0] == n);
}

bool call_true(PyObject* fn) {
  PyObject* r = PyObject_CallNoArgs(fn);
  if (!r) throw py::error_already_set();
  const bool t = r == Py_True;
  Py_DECREF(r);
  return t;
}

py::object steal_or_throw(PyObject* o) {
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

void count(PyObject* key) {  // fusegrad.torch.dispatch_counts[key] += 1
  PyObject* counts = PyDict_GetItemWithError(fast().module_dict, fast().s_counts);  // borrowed
  if (!counts || !PyDict_Check(counts)) {
    if (!PyErr_Occurred()) type_error("fusegrad.torch.dispatch_counts must be a dict (a collections.Counter)");
    throw py::error_already_set();
  }
  PyObject* old = PyDict_GetItemWithError(counts, key);  // borrowed; a missing key counts from 0
  if (!old && PyErr_Occurred()) throw py::error_already_set();
  const long long n = old ? PyLong_AsLongLong(old) : 0;
  py::object v = py::reinterpret_steal<py::object>(PyLong_FromLongLong(n + 1));
  if (PyDict_SetItem(counts, key, v.ptr()) < 0) throw py::error_already_set();
}

int bucket(int64_t n) {  // floor(log2(n)) for n >= 1, as Python's n.bit_length() - 1
  return 63 - __builtin_clzll(static_cast<unsigned long long>(n));
}

// The arguments a fast path has read, for the Function forward that its apply is about to call on
// this thread with the same objects (the first argument an input tensor, the rest tensors or None).
struct Stash {
  PyObject* obj[3] = {};  // identities, compared only (the caller holds them for the call)
  Arg arg[3];
};
thread_local Stash* stash_slot = nullptr;

// The stash if it holds exactly these objects, else null (taken either way: one forward per stash).
const Stash* take_stash(PyObject* a, PyObject* b = nullptr, PyObject* c = nullptr) {
  Stash* s = stash_slot;
  stash_slot = nullptr;
  return s && s->obj[0] == a && s->obj[1] == b && s->obj[2] == c ? s : nullptr;
}

// The common end of a fast path after its checks: the policy's choice for this dtype and size
// (PyTorch's op: original(*orig_args, **kwnames)), the count, then the kernel alone when no
// gradient is needed (run()) or the Function's apply(*apply_args) with st stashed for its forward.
template <typename Run>
py::object fast_finish(FastOp id, DType d, int64_t size, bool grad, Stash& st, PyObject* const* orig_args,
                       size_t n_orig, PyObject* orig_kwnames, PyObject* const* apply_args, size_t n_apply, Run run) {
  FastState& f = fast();
  const FastState::Op& op = f.op[id];
  if (size < 1 || call_true(f.functorch_active)) return py::none();
  if (!op.ours[d == DType::f64][bucket(size)]) {
    count(op.key_torch);
    return steal_or_throw(PyObject_Vectorcall(op.original, orig_args, n_orig, orig_kwnames));
  }
  count(op.key_ours);
  if (!(grad && call_true(torch_refs().is_grad_enabled))) return run();
  stash_slot = &st;
  PyObject* y = PyObject_Vectorcall(op.apply, apply_args, n_apply, nullptr);
  stash_slot = nullptr;  // (taken by the forward, unless apply failed before calling it)
  return steal_or_throw(y);
}

// ctx.save_for_backward(*tensors) is the Python method `self.to_save = tensors`: set the attribute
// itself (no Python frame); autograd turns it into saved variables after the forward.
void save(py::handle ctx, const py::tuple& tensors) {
  static PyObject* s_to_save = PyUnicode_InternFromString("to_save");
  if (PyObject_SetAttr(ctx.ptr(), s_to_save, tensors.ptr()) < 0) throw py::error_already_set();
}

// A backward with grad mode on (create_graph=True) would give gradients without this node's
// second-order terms (the kernels are not differentiable): raise RuntimeError, as
// _torch_cuda.first_order_only does for the Python Functions, with its message
// (_torch_cuda.double_backward_message). The C++ backwards check it themselves: their nodes' apply
// calls them straight (_torch_node_apply).
void first_order_only(const char* op) {
  if (!call_true(torch_refs().is_grad_enabled)) return;
  py::object msg = py::module_::import("fusegrad._torch_cuda").attr("double_backward_message")(op);
  PyErr_SetObject(PyExc_RuntimeError, msg.ptr());
  throw py::error_already_set();
}

// (ctx.saved_tensors, ctx.needs_input_grad, dy.contiguous()) for a C++ backward, n tensors saved.
std::tuple<py::tuple, py::tuple, py::object> unpack_ctx(py::handle ctx, py::handle dy, Py_ssize_t n,
                                                        Py_ssize_t n_inputs, const char* fn) {
  static PyObject* s_saved = PyUnicode_InternFromString("saved_tensors");
  static PyObject* s_needs = PyUnicode_InternFromString("needs_input_grad");
  static PyObject* s_contiguous = PyUnicode_InternFromString("contiguous");
  py::object saved = get(ctx.ptr(), s_saved), needs = get(ctx.ptr(), s_needs);
  if (!PyTuple_Check(saved.ptr()) || PyTuple_GET_SIZE(saved.ptr()) != n || !PyTuple_Check(needs.ptr()) ||
      PyTuple_GET_SIZE(needs.ptr()) != n_inputs)
    value_error(cat(fn, ": ctx must come from the matching forward"));
  return {py::reinterpret_borrow<py::tuple>(saved), py::reinterpret_borrow<py::tuple>(needs),
          call0(dy.ptr(), s_contiguous)};
}

// ---- layer_norm(input, normalized_shape, weight, bias, eps)
py::object layernorm_fast(py::handle x_obj, py::handle ns, py::handle w_obj, py::handle b_obj, py::handle eps_obj) {
  if (!fast().ready) return py::none();
  Stash st;
  Arg &x = st.arg[0], &w = st.arg[1], &b = st.arg[2];
  bool grad = false;
  if (!peek(x_obj.ptr(), x, grad) || x.shape.empty() || x.last() < 1) return py::none();
  const int64_t C = x.last();
  // normalized_shape: an int, or a tuple / list / torch.Size of one int, equal to C
  PyObject* nso = ns.ptr();
  if ((PyTuple_Check(nso) && PyTuple_GET_SIZE(nso) == 1) || (PyList_Check(nso) && PyList_GET_SIZE(nso) == 1))
    nso = PySequence_Fast_GET_ITEM(nso, 0);
  if (!PyLong_CheckExact(nso) || PyLong_AsLongLong(nso) != C) {
    PyErr_Clear();
    return py::none();
  }
  if (!peek_param(w_obj, w, x.d, C, grad) || !peek_param(b_obj, b, x.d, C, grad)) return py::none();
  if (!PyFloat_CheckExact(eps_obj.ptr())) return py::none();
  const double eps = PyFloat_AS_DOUBLE(eps_obj.ptr());
  if (!(eps >= 0)) return py::none();
  st.obj[0] = x_obj.ptr();
  st.obj[1] = w_obj.ptr();
  st.obj[2] = b_obj.ptr();
  PyObject* orig[] = {x_obj.ptr(), ns.ptr(), w_obj.ptr(), b_obj.ptr(), eps_obj.ptr()};
  PyObject* apply[] = {x_obj.ptr(), w_obj.ptr(), b_obj.ptr(), eps_obj.ptr()};
  return fast_finish(kLayerNorm, x.d, x.numel(), grad, st, orig, 5, nullptr, apply, 4,
                     [&] {
                       const size_t bytes = 2 * static_cast<size_t>(x.rows()) * (x.d == DType::f64 ? 8 : 4);
                       std::unique_ptr<char[]> stats(new char[bytes]);  // (not kept without autograd)
                       return layernorm_run(x, w, b, eps, stats.get());
                     });
}

// fusegrad.torch._LayerNorm.forward(ctx, x, weight, bias, eps): y; saves x and weight, and ctx.stats
// = the rows' mean and rstd (an LnStats capsule).
py::object layernorm_ctx_fwd(py::handle ctx, py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  auto run = [&](const Arg& x, const Arg& w, const Arg& b) {
    void* data = nullptr;
    py::object stats = ln_stats_new(x.rows(), x.d, &data);
    return std::make_pair(layernorm_run(x, w, b, eps, data), stats);
  };
  std::pair<py::object, py::object> r;
  if (const Stash* st = take_stash(x_obj.ptr(), w_obj.ptr(), b_obj.ptr())) {
    r = run(st->arg[0], st->arg[1], st->arg[2]);
  } else {
    const LayerNormArgs a = layernorm_args(x_obj, w_obj, b_obj, eps, "_torch_layernorm_ctx_forward");
    r = run(a.x, a.w, a.b);
  }
  auto& [y, stats] = r;
  static PyObject* s_stats = PyUnicode_InternFromString("stats");
  save(ctx, py::make_tuple(x_obj, w_obj));
  if (PyObject_SetAttr(ctx.ptr(), s_stats, stats.ptr()) < 0) throw py::error_already_set();
  return y;
}

// fusegrad.torch._LayerNorm.backward(ctx, dy): (dx, dweight or None, dbias or None, None) from what
// layernorm_ctx_fwd saved (x, weight; ctx.stats); a None weight or bias has needs_input_grad False.
py::tuple layernorm_ctx_bwd(py::handle ctx, py::handle dy_obj) {
  const char* fn = "_torch_layernorm_ctx_backward";
  first_order_only("layer_norm");
  static PyObject* s_stats = PyUnicode_InternFromString("stats");
  auto [saved, needs, dy] = unpack_ctx(ctx, dy_obj, 2, 4, fn);
  const LayerNormBwdArgs a = layernorm_bwd_args(dy, saved[0], saved[1], fn);
  py::object cap = get(ctx.ptr(), s_stats);
  const auto* st = PyCapsule_IsValid(cap.ptr(), kLnStats)
                       ? static_cast<const LnStats*>(PyCapsule_GetPointer(cap.ptr(), kLnStats)) : nullptr;
  if (!st || st->d != a.x.d || st->rows != a.x.rows())
    value_error(cat(fn, ": ctx.stats must be the statistics of this x's forward (ctx must come from the matching "
                    "forward)"));
  const size_t item = a.x.d == DType::f64 ? 8 : 4;
  py::tuple g = layernorm_bwd_run(a, st->data, static_cast<const char*>(st->data) + item * a.x.rows());
  return py::make_tuple(g[0], needs[1].ptr() == Py_True ? py::object(g[1]) : py::none(),
                        needs[2].ptr() == Py_True ? py::object(g[2]) : py::none(), py::none());
}

// ---- gelu(input, approximate)
py::object gelu_fast(py::handle x_obj, py::handle approximate) {
  if (!fast().ready) return py::none();
  Stash st;
  bool grad = false;
  PyObject* a = approximate.ptr();
  if (!peek(x_obj.ptr(), st.arg[0], grad) || !PyUnicode_CheckExact(a)) return py::none();
  const bool none = PyUnicode_CompareWithASCIIString(a, "none") == 0;
  if (!none && PyUnicode_CompareWithASCIIString(a, "tanh") != 0) return py::none();
  st.obj[0] = x_obj.ptr();
  PyObject* orig[] = {x_obj.ptr(), a};  // F.gelu(input, approximate=...)
  PyObject* apply[] = {x_obj.ptr(), a};
  return fast_finish(none ? kGelu : kGeluTanh, st.arg[0].d, st.arg[0].numel(), grad, st, orig, 1,
                     fast().kw_approximate, apply, 2, [&] { return gelu_run(st.arg[0], !none); });
}

// fusegrad.torch._Gelu.forward(ctx, x, approximate): y; saves gelu'(x) (not x): the backward is one multiply.
py::object gelu_ctx_fwd(py::handle ctx, py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_ctx_forward";
  const bool t = tanh_form(approximate, fn);
  py::tuple r;
  if (const Stash* st = take_stash(x_obj.ptr())) {
    r = gelu_grad_run(st->arg[0], t);
  } else {
    Arg x = read(x_obj, fn, "x");
    float_arg(x, fn, "x");
    r = gelu_grad_run(x, t);
  }
  save(ctx, py::make_tuple(r[1]));
  return r[0];
}

// fusegrad.torch._Gelu.backward(ctx, dy): (dx, None), dx = dy * the saved gelu'(x).
py::tuple gelu_ctx_bwd(py::handle ctx, py::handle dy_obj) {
  first_order_only("gelu");
  auto [saved, needs, dy] = unpack_ctx(ctx, dy_obj, 1, 2, "_torch_gelu_ctx_backward");
  return py::make_tuple(gelu_bwd_grad(dy, saved[0]), py::none());
}

// ---- linear(input, weight, bias)
py::object linear_fast(py::handle x_obj, py::handle w_obj, py::handle b_obj) {
  FastState& f = fast();
  if (!f.ready) return py::none();
  Stash st;
  Arg &x = st.arg[0], &w = st.arg[1], &b = st.arg[2];
  bool grad = false;
  if (!peek(x_obj.ptr(), x, grad) || !peek(w_obj.ptr(), w, grad) || x.shape.empty() || w.d != x.d ||
      w.shape.size() != 2 || w.shape[1] != x.last() || !peek_param(b_obj, b, x.d, w.shape[0], grad))
    return py::none();
  if (call_true(f.autocast_cpu)) return py::none();  // the Python path runs the bf16 kernels
  st.obj[0] = x_obj.ptr();
  st.obj[1] = w_obj.ptr();
  st.obj[2] = b_obj.ptr();
  PyObject* args[] = {x_obj.ptr(), w_obj.ptr(), b_obj.ptr()};
  return fast_finish(kLinear, x.d, x.numel() * w.shape[0], grad, st, args, 3, nullptr, args, 3,
                     [&] { return linear_run(x, w, b); });
}

// fusegrad.torch._Linear.forward(ctx, x, weight, bias): y; saves x and weight.
py::object linear_ctx_fwd(py::handle ctx, py::handle x_obj, py::handle w_obj, py::handle b_obj) {
  py::object y;
  if (const Stash* st = take_stash(x_obj.ptr(), w_obj.ptr(), b_obj.ptr())) {
    y = linear_run(st->arg[0], st->arg[1], st->arg[2]);
  } else {
    const LinearArgs a = linear_args(x_obj, w_obj, b_obj, "_torch_linear_ctx_forward");
    y = linear_run(a.x, a.w, a.b);
  }
  save(ctx, py::make_tuple(x_obj, w_obj));
  return y;
}

// fusegrad.torch._Linear.backward(ctx, dy): (dx, dweight, dbias or None); a None bias has
// needs_input_grad False.
py::tuple linear_ctx_bwd(py::handle ctx, py::handle dy_obj) {
  first_order_only("linear");
  auto [saved, needs, dy] = unpack_ctx(ctx, dy_obj, 2, 3, "_torch_linear_ctx_backward");
  py::tuple g = linear_bwd(dy, saved[0], saved[1]);
  return py::make_tuple(g[0], g[1], needs[2].ptr() == Py_True ? py::object(g[2]) : py::none());
}

// ---- the state
void fast_setup(py::handle parameter, py::handle functorch_active, py::handle autocast_cpu,
                py::dict module_dict, py::dict ops) {
  FastState& f = fast();
  auto keep = [](py::handle o) { return py::reinterpret_borrow<py::object>(o).release().ptr(); };
  for (int i = 0; i < kFastOps; ++i) {  // {op: (apply, original, (key_torch, key_ours))}
    if (!ops.contains(kFastOpNames[i])) value_error(cat("_torch_fast_setup: ops lacks '", kFastOpNames[i], "'"));
    py::tuple t = ops[kFastOpNames[i]];
    py::tuple keys = t[2];
    f.op[i].apply = keep(t[0]);
    f.op[i].original = keep(t[1]);
    f.op[i].key_torch = keep(keys[0]);
    f.op[i].key_ours = keep(keys[1]);
  }
  f.parameter = keep(parameter);
  f.functorch_active = keep(functorch_active);
  f.autocast_cpu = keep(autocast_cpu);
  f.module_dict = keep(module_dict);
  f.s_counts = PyUnicode_InternFromString("dispatch_counts");
  f.s_requires_grad = PyUnicode_InternFromString("requires_grad");
  f.kw_approximate = py::make_tuple("approximate").release().ptr();
  torch_refs();
  f.ready = true;
}

void fast_policy(const std::string& op, py::bytes f32, py::bytes f64) {
  const int i = int(std::find_if(kFastOpNames, kFastOpNames + kFastOps, [&](const char* n) { return op == n; }) -
                    kFastOpNames);
  if (i == kFastOps) value_error(cat("_torch_fast_policy: no fast path for op '", op, "'"));
  const std::string a = f32, b = f64;
  if (a.size() != 64 || b.size() != 64) value_error("_torch_fast_policy: want 64 bytes per dtype (one per bucket)");
  for (int k = 0; k < 64; ++k) {
    fast().op[i].ours[0][k] = a[k] != 0;
    fast().op[i].ours[1][k] = b[k] != 0;
  }
}
}  // namespace

void bind_torch(py::module_& m) {
  m.def("_torch_layernorm_forward", &layernorm_fwd, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        "layernorm_forward on torch tensors: (y tensor, mean, rstd NumPy arrays); x contiguous CPU (..., C),\n"
        "weight/bias (C,) or None.");
  m.def("_torch_layernorm_backward", &layernorm_bwd, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"),
        py::arg("rstd"), "layernorm_backward on torch tensors (mean/rstd: the forward's arrays): (dx, dweight, dbias).");
  m.def("_torch_linear_forward", &linear_fwd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        "y = x @ weight.T + bias on torch tensors; x (..., in), weight (out, in), bias (out,) or None.");
  m.def("_torch_linear_backward", &linear_bwd, py::arg("dy"), py::arg("x"), py::arg("weight"),
        "(dx, dweight, dbias) of _torch_linear_forward, dx in x's shape.");
  m.def("_torch_gelu_forward", &gelu_fwd, py::arg("x"), py::arg("approximate"),
        "gelu_forward on a torch tensor (approximate 'none' or 'tanh').");
  m.def("_torch_gelu_backward", &gelu_bwd, py::arg("dy"), py::arg("x"), py::arg("approximate"),
        "gelu_backward on torch tensors: dx = dy * gelu'(x).");
  m.def("_torch_gelu_forward_with_grad", &gelu_fwd_grad, py::arg("x"), py::arg("approximate"),
        "gelu_forward_with_grad on a torch tensor: (y, dydx = gelu'(x)).");
  m.def("_torch_gelu_backward_from_grad", &gelu_bwd_grad, py::arg("dy"), py::arg("dydx"),
        "gelu_backward_from_grad on torch tensors: dx = dy * dydx.");
  m.def("_torch_layernorm_fast", &layernorm_fast, py::arg("input"), py::arg("normalized_shape"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"),
        "fusegrad.torch.layer_norm's common eager call decided and run in one call (see csrc/bind/torch.cpp);\n"
        "None when the call is not one it takes (the Python path then takes it).");
  m.def("_torch_gelu_fast", &gelu_fast, py::arg("input"), py::arg("approximate"),
        "fusegrad.torch.gelu's common eager call in one call; None when it is not one it takes.");
  m.def("_torch_linear_fast", &linear_fast, py::arg("input"), py::arg("weight"), py::arg("bias"),
        "fusegrad.torch.linear's common eager call in one call; None when it is not one it takes.");
  m.def("_torch_layernorm_ctx_forward", &layernorm_ctx_fwd, py::arg("ctx"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"),
        "fusegrad.torch's layer_norm autograd.Function forward: y; saves x and weight (ctx.to_save),\n"
        "ctx.stats = the rows' mean and rstd (a capsule that only the backward reads).");
  m.def(
      "_torch_node_apply",
      [](py::object fn) { return steal_or_throw(PyInstanceMethod_New(fn.ptr())); },
      py::arg("fn"),
      "fn as a method (an instancemethod): set as a Function's _backward_cls.apply, the autograd node\n"
      "calls fn(ctx, *grads) without BackwardCFunction.apply's Python frame.");
  m.def("_torch_layernorm_ctx_backward", &layernorm_ctx_bwd, py::arg("ctx"), py::arg("dy"),
        "fusegrad.torch's layer_norm autograd.Function backward: (dx, dweight, dbias, None).");
  m.def("_torch_gelu_ctx_forward", &gelu_ctx_fwd, py::arg("ctx"), py::arg("x"), py::arg("approximate"),
        "fusegrad.torch's gelu autograd.Function forward: y; saves gelu'(x).");
  m.def("_torch_gelu_ctx_backward", &gelu_ctx_bwd, py::arg("ctx"), py::arg("dy"),
        "fusegrad.torch's gelu autograd.Function backward: (dx, None).");
  m.def("_torch_linear_ctx_forward", &linear_ctx_fwd, py::arg("ctx"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), "fusegrad.torch's linear autograd.Function forward: y; saves x and weight.");
  m.def("_torch_linear_ctx_backward", &linear_ctx_bwd, py::arg("ctx"), py::arg("dy"),
        "fusegrad.torch's linear autograd.Function backward: (dx, dweight, dbias or None).");
  m.def("_torch_fast_setup", &fast_setup, py::arg("parameter"), py::arg("functorch_active"),
        py::arg("autocast_cpu"), py::arg("module_dict"), py::arg("ops"),
        "fusegrad.torch's state for the eager fast paths (called once at import); ops: {name: (apply,\n"
        "original, (key_torch, key_ours))} for layer_norm, gelu, gelu_tanh, linear.");
  m.def("_torch_fast_policy", &fast_policy, py::arg("op"), py::arg("float32"), py::arg("float64"),
        "The policy's choice per size bucket (64 bytes per dtype, 1 = fusegrad), pushed on every policy change.");
}

}  // namespace fg::bind
