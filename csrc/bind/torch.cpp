// Kernel entries that take torch.Tensor objects directly (_C._torch_*, underscored: fusegrad.torch's eager
// path, not part of fusegrad.ops).
//
// No libtorch is linked: a tensor is read through its Python attributes (dtype, is_cpu,
// is_contiguous(), shape, data_ptr()) with the C API and interned names, ~0.3 us a tensor, where
// a NumPy view (numpy(force=True)) costs ~0.9 us and pybind11's array checks come on top. Outputs
// are NumPy arrays from fusegrad's host cache handed to torch.from_numpy, the cheapest way to a
// tensor measured (np alloc + from_numpy ~0.9 us; torch.empty ~1.4 us). Everything the NumPy
// entries check is checked here too, naming the function and the argument: the type (a torch
// tensor, or a NumPy array where noted), the dtype (TypeError), the device, contiguity, alignment,
// shapes (ValueError), and that the tensor has memory (a fake or meta tensor has none). The
// caller's references keep every input alive for the call; outputs are new memory, never aliased.
#include <Python.h>

#include <string>
#include <vector>

#include "bind/bind.h"
#include "bind/check.h"
#include "ops/activations.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"

namespace fg::bind {

namespace {

// torch's objects and the attribute names, looked up once (torch is imported on first use: it is
// never a dependency of fusegrad._C itself). Held for the life of the process.
struct TorchRefs {
  PyObject *tensor, *f32, *f64, *i32, *i64, *from_numpy;
  PyObject *s_dtype, *s_is_cpu, *s_is_contiguous, *s_shape, *s_data_ptr, *s_device;
};

const TorchRefs& torch_refs() {
  static const TorchRefs r = [] {
    py::module_ torch = py::module_::import("torch");
    auto keep = [](py::object o) { return o.release().ptr(); };
    auto name = [](const char* s) { return PyUnicode_InternFromString(s); };
    return TorchRefs{keep(torch.attr("Tensor")), keep(torch.attr("float32")), keep(torch.attr("float64")),
                     keep(torch.attr("int32")), keep(torch.attr("int64")), keep(torch.attr("from_numpy")),
                     name("dtype"), name("is_cpu"), name("is_contiguous"), name("shape"), name("data_ptr"),
                     name("device")};
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
  py::object dt = get(o.ptr(), r.s_dtype);
  a.d = dt.ptr() == r.f32 ? DType::f32 : dt.ptr() == r.f64 ? DType::f64 : dt.ptr() == r.i64 ? DType::i64
      : dt.ptr() == r.i32 ? DType::i32 : DType::other;
  if (a.d == DType::other) type_error(cat(fn, ": ", name, " has dtype ", py::str(dt).cast<std::string>(),
                                          "; these kernels take float32/float64 (int64/int32 indices)"));
  if (get(o.ptr(), r.s_is_cpu).ptr() != Py_True)
    value_error(cat(fn, ": ", name, " must be a CPU tensor, got one on ",
                    py::str(get(o.ptr(), r.s_device)).cast<std::string>()));
  if (call0(o.ptr(), r.s_is_contiguous).ptr() != Py_True)
    value_error(cat(fn, ": ", name, " must be contiguous (call .contiguous() on it), got strides ",
                    py::str(py::handle(o).attr("stride")()).cast<std::string>()));
  py::object shape = get(o.ptr(), r.s_shape);
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape.ptr());
  a.shape.resize(nd);
  for (Py_ssize_t i = 0; i < nd; ++i) a.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
  // fake, meta and functional tensors have no memory to read: data_ptr() raises or returns 0
  PyObject* p = PyObject_CallMethodNoArgs(o.ptr(), r.s_data_ptr);
  if (p) {
    a.data = PyLong_AsVoidPtr(p);
    Py_DECREF(p);
  }
  if (!p || PyErr_Occurred() || (a.data == nullptr && a.numel() > 0)) {
    PyErr_Clear();
    value_error(cat(fn, ": ", name, " has no memory to read (a fake, meta or functional tensor? got ", type_name(o),
                    "); the torch.library custom ops (torch.ops.fusegrad.*) take those"));
  }
  const auto item = a.d == DType::f64 || a.d == DType::i64 ? 8u : 4u;
  if (reinterpret_cast<uintptr_t>(a.data) % item)
    value_error(cat(fn, ": ", name, " must be aligned to its dtype, got an unaligned tensor"));
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

// A new NumPy array (fusegrad's host cache) and the torch tensor over it.
template <typename T>
py::array alloc(const std::vector<int64_t>& shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}
py::object to_torch(const py::array& a) {
  PyObject* t = PyObject_CallOneArg(torch_refs().from_numpy, a.ptr());
  if (!t) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(t);
}

// ---------------------------------------------------------------- layer norm
// Runs the forward on checked arguments: (y tensor, stats), stats one NumPy array (2, *x.shape[:-1])
// holding mean and rstd (one allocation, not two: the training call's forward keeps it whole).
std::pair<py::object, py::array> layernorm_run(const Arg& x, const Arg& w, const Arg& b, double eps) {
  const int64_t N = x.rows(), C = x.last();
  return dispatch_float(x.d, [&](auto tag) -> std::pair<py::object, py::array> {
    using T = decltype(tag);
    std::vector<int64_t> ss{2};
    ss.insert(ss.end(), x.shape.begin(), x.shape.end() - 1);
    py::array y = alloc<T>(x.shape), stats = alloc<T>(ss);
    T *py_ = ptr<T>(y), *pm = ptr<T>(stats);
    {
      py::gil_scoped_release nogil;
      layernorm_forward<T>(py_, pm, pm + N, p<T>(x), p<T>(w), p<T>(b), N, C, eps);
    }
    return {to_torch(y), stats};
  });
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
  auto [y, stats] = layernorm_run(a.x, a.w, a.b, eps);
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
    py::array dx = alloc<T>(a.x.shape), dw = alloc<T>({C}), db = alloc<T>({C});
    T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
    {
      py::gil_scoped_release nogil;
      layernorm_backward<T>(pdx, pdw, pdb, p<T>(a.dy), p<T>(a.x), p<T>(a.w), static_cast<const T*>(mean),
                            static_cast<const T*>(rstd), N, C);
    }
    return py::make_tuple(to_torch(dx), to_torch(dw), to_torch(db));
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

// fusegrad.torch._LayerNorm.backward(ctx, dy): (dx, dweight or None, dbias or None, None) from what
// layernorm_ctx_fwd saved (x, weight; ctx.stats); a None weight or bias has needs_input_grad False.
py::tuple layernorm_ctx_bwd(py::handle ctx, py::handle dy_obj) {
  const char* fn = "_torch_layernorm_ctx_backward";
  static PyObject* s_saved = PyUnicode_InternFromString("saved_tensors");
  static PyObject* s_stats = PyUnicode_InternFromString("stats");
  static PyObject* s_needs = PyUnicode_InternFromString("needs_input_grad");
  static PyObject* s_contiguous = PyUnicode_InternFromString("contiguous");
  py::object saved = get(ctx.ptr(), s_saved), stats = get(ctx.ptr(), s_stats), needs = get(ctx.ptr(), s_needs);
  py::object dy = call0(dy_obj.ptr(), s_contiguous);
  if (!PyTuple_Check(saved.ptr()) || PyTuple_GET_SIZE(saved.ptr()) != 2 || !PyTuple_Check(needs.ptr()) ||
      PyTuple_GET_SIZE(needs.ptr()) != 4)
    value_error(cat(fn, ": ctx must come from _torch_layernorm_ctx_forward"));
  const LayerNormBwdArgs a =
      layernorm_bwd_args(dy, PyTuple_GET_ITEM(saved.ptr(), 0), PyTuple_GET_ITEM(saved.ptr(), 1), fn);
  std::vector<int64_t> ss{2};
  ss.insert(ss.end(), a.x.shape.begin(), a.x.shape.end() - 1);
  const Arg st = read(stats, fn, "ctx.stats", true);
  same_dtype(st, a.x.d, fn, "ctx.stats");
  want_shape(st, ss, fn, "ctx.stats");
  const size_t item = a.x.d == DType::f64 ? 8 : 4;
  py::tuple g = layernorm_bwd_run(a, st.data, static_cast<const char*>(st.data) + item * a.x.rows());
  auto want = [&](int i) { return PyTuple_GET_ITEM(needs.ptr(), i) == Py_True; };
  return py::make_tuple(g[0], want(1) ? py::object(g[1]) : py::none(), want(2) ? py::object(g[2]) : py::none(),
                        py::none());
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

py::object linear_fwd(py::handle x_obj, py::handle w_obj, py::handle b_obj) {
  const char* fn = "_torch_linear_forward";
  Arg x = read(x_obj, fn, "x"), w = read(w_obj, fn, "weight");
  const std::vector<int64_t> ys = linear_shapes(x, w, fn);
  const DType d = x.d;
  const int64_t IN = x.last(), N = x.rows(), OUT = w.shape[0];
  Arg b = read_param(b_obj, d, OUT, fn, "bias");
  return dispatch_float(d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    py::array y = alloc<T>(ys);
    T* py_ = ptr<T>(y);
    {
      py::gil_scoped_release nogil;
      linear_forward<T>(py_, p<T>(x), p<T>(w), p<T>(b), N, IN, OUT, nullptr);
    }
    return to_torch(y);
  });
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
    py::array dx = alloc<T>(x.shape), dw = alloc<T>(w.shape), db = alloc<T>({OUT});
    T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
    {
      py::gil_scoped_release nogil;
      linear_backward<T>(pdx, pdw, pdb, p<T>(dy), p<T>(x), p<T>(w), N, IN, OUT);
    }
    return py::make_tuple(to_torch(dx), to_torch(dw), to_torch(db));
  });
}

// ---------------------------------------------------------------- gelu
bool tanh_form(const std::string& approximate, const char* fn) {
  if (approximate == "none") return false;
  if (approximate == "tanh") return true;
  value_error(cat(fn, ": approximate must be 'none' or 'tanh', got '", approximate, "'"));
}

py::object gelu_fwd(py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_forward";
  const bool t = tanh_form(approximate, fn);
  Arg x = read(x_obj, fn, "x");
  const DType d = float_arg(x, fn, "x");
  return dispatch_float(d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    py::array y = alloc<T>(x.shape);
    T* py_ = ptr<T>(y);
    {
      py::gil_scoped_release nogil;
      gelu_forward<T>(py_, p<T>(x), x.numel(), t);
    }
    return to_torch(y);
  });
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
    py::array dx = alloc<T>(a.shape);
    T* pdx = ptr<T>(dx);
    {
      py::gil_scoped_release nogil;
      kernel(pdx, p<T>(dy), p<T>(a), a.numel());
    }
    return to_torch(dx);
  });
}

py::object gelu_bwd(py::handle dy_obj, py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_backward";
  const bool t = tanh_form(approximate, fn);
  return unary_bwd(dy_obj, x_obj, fn, "x", [t](auto* dx, const auto* dy, const auto* x, int64_t n) {
    gelu_backward(dx, dy, x, n, t);
  });
}

// (y, dydx) of gelu_forward_with_grad, for fusegrad.torch's eager autograd (saves dydx, not x)
py::object gelu_fwd_grad(py::handle x_obj, const std::string& approximate) {
  const char* fn = "_torch_gelu_forward_with_grad";
  const bool t = tanh_form(approximate, fn);
  Arg x = read(x_obj, fn, "x");
  const DType d = float_arg(x, fn, "x");
  return dispatch_float(d, [&](auto tag) -> py::object {
    using T = decltype(tag);
    py::array y = alloc<T>(x.shape), dydx = alloc<T>(x.shape);
    T *py_ = ptr<T>(y), *pd = ptr<T>(dydx);
    {
      py::gil_scoped_release nogil;
      gelu_forward_with_grad<T>(py_, pd, p<T>(x), x.numel(), t);
    }
    return py::make_tuple(to_torch(y), to_torch(dydx));
  });
}

py::object gelu_bwd_grad(py::handle dy_obj, py::handle dydx_obj) {
  return unary_bwd(dy_obj, dydx_obj, "_torch_gelu_backward_from_grad", "dydx",
                   [](auto* dx, const auto* dy, const auto* d, int64_t n) { gelu_backward_from_grad(dx, dy, d, n); });
}

// ---------------------------------------------------------------- eager fast path (layer_norm)
// fusegrad.torch.layer_norm's common call in one C++ call: plain CPU tensors (torch.Tensor or
// nn.Parameter exactly, contiguous, float32/float64, one dtype), normalized over the last axis,
// weight and bias (C,) or None. Everything fusegrad.torch's Python path decides for such a call
// is decided here, from the state that path keeps (registered by _torch_fast_setup and pushed again
// on every policy change by _torch_fast_policy): the policy's choice for the size bucket, the
// dispatch count, no gradient -> the kernel alone, a gradient -> the registered autograd Function's
// apply. Any other call (a subclass or fake tensor, another device or dtype, strides, shapes that
// do not match, functorch transforms) returns None and the Python path takes it, so behaviour,
// errors and fallback counts stay that path's. Why: the Python path read the same attributes
// through ~40 interpreted steps (~3 us a call, quiet Zen 4); this reads each once.
struct FastState {
  PyObject* parameter = nullptr;         // torch.nn.Parameter (torch.Tensor is in TorchRefs)
  PyObject* grad_enabled = nullptr;      // torch.is_grad_enabled
  PyObject* functorch_active = nullptr;  // torch._C._are_functorch_transforms_active
  PyObject* counts = nullptr;            // fusegrad.torch.dispatch_counts (a dict subclass)
  PyObject *s_requires_grad = nullptr;
  struct Op {
    PyObject *apply = nullptr, *original = nullptr, *key_torch = nullptr, *key_ours = nullptr;
    uint8_t ours[2][64] = {};  // [float32, float64][floor(log2(numel))]: 1 = fusegrad's kernel
  } layer_norm;
  bool ready = false;
};
FastState& fast() {
  static FastState f;
  return f;
}

// A plain, contiguous CPU float tensor with memory (never raises): its Arg, or false.
bool peek(PyObject* o, Arg& a, bool& grad) {
  const TorchRefs& r = torch_refs();
  const FastState& f = fast();
  PyTypeObject* t = Py_TYPE(o);
  if (reinterpret_cast<PyObject*>(t) != r.tensor && reinterpret_cast<PyObject*>(t) != f.parameter) return false;
  auto attr = [&](PyObject* name) { return py::reinterpret_steal<py::object>(PyObject_GetAttr(o, name)); };
  py::object dt = attr(r.s_dtype);
  a.d = dt.ptr() == r.f32 ? DType::f32 : dt.ptr() == r.f64 ? DType::f64 : DType::other;
  if (a.d == DType::other) {
    PyErr_Clear();  // (a failed getattr: the Python path reports it)
    return false;
  }
  py::object cpu = attr(r.s_is_cpu), rg = attr(f.s_requires_grad), shape = attr(r.s_shape);
  py::object contig = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(o, r.s_is_contiguous));
  if (cpu.ptr() != Py_True || contig.ptr() != Py_True || !rg || !shape || !PyTuple_Check(shape.ptr())) {
    PyErr_Clear();
    return false;
  }
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape.ptr());
  a.shape.resize(nd);
  for (Py_ssize_t i = 0; i < nd; ++i) a.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
  PyObject* p = PyObject_CallMethodNoArgs(o, r.s_data_ptr);
  a.data = p ? PyLong_AsVoidPtr(p) : nullptr;
  Py_XDECREF(p);
  const auto item = a.d == DType::f64 ? 8u : 4u;
  if (PyErr_Occurred() || a.data == nullptr || reinterpret_cast<uintptr_t>(a.data) % item) {
    PyErr_Clear();
    return false;
  }
  grad = grad || rg.ptr() == Py_True;
  return true;
}

bool call_true(PyObject* fn) {
  PyObject* r = PyObject_CallNoArgs(fn);
  if (!r) throw py::error_already_set();
  const bool t = r == Py_True;
  Py_DECREF(r);
  return t;
}

void count(PyObject* key) {  // dispatch_counts[key] += 1
  PyObject* counts = fast().counts;
  PyObject* old = PyDict_GetItemWithError(counts, key);  // borrowed; a missing key counts from 0
  if (!old && PyErr_Occurred()) throw py::error_already_set();
  const long long n = old ? PyLong_AsLongLong(old) : 0;
  py::object v = py::reinterpret_steal<py::object>(PyLong_FromLongLong(n + 1));
  if (PyDict_SetItem(counts, key, v.ptr()) < 0) throw py::error_already_set();
}

int bucket(int64_t n) {  // floor(log2(n)) for n >= 1, as Python's n.bit_length() - 1
  return 63 - __builtin_clzll(static_cast<unsigned long long>(n));
}

// The arguments layernorm_fast has just read, for the autograd Function's forward that its apply
// is about to call on this thread with the same objects (it then need not read them again).
struct LayerNormStash {
  PyObject *x = nullptr, *w = nullptr, *b = nullptr;  // identities, compared only (borrowed for the call)
  LayerNormArgs a;
};
thread_local LayerNormStash* ln_stash = nullptr;

// fusegrad.torch._LayerNorm.forward(ctx, x, weight, bias, eps): y; saves x and weight, and ctx.stats
// = the (2, ...) array of mean and rstd (its two rows are the backward's mean and rstd).
py::object layernorm_ctx_fwd(py::handle ctx, py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  LayerNormStash* st = ln_stash;
  ln_stash = nullptr;
  std::pair<py::object, py::array> r;
  if (st && st->x == x_obj.ptr() && st->w == w_obj.ptr() && st->b == b_obj.ptr()) {
    r = layernorm_run(st->a.x, st->a.w, st->a.b, eps);
  } else {
    const LayerNormArgs a = layernorm_args(x_obj, w_obj, b_obj, eps, "_torch_layernorm_ctx_forward");
    r = layernorm_run(a.x, a.w, a.b, eps);
  }
  // ctx.save_for_backward(x, weight) is the Python method `self.to_save = tensors`: set the
  // attribute itself (no Python frame); autograd turns it into saved variables after the forward.
  static PyObject* s_to_save = PyUnicode_InternFromString("to_save");
  static PyObject* s_stats = PyUnicode_InternFromString("stats");
  py::tuple to_save = py::make_tuple(x_obj, w_obj);
  if (PyObject_SetAttr(ctx.ptr(), s_to_save, to_save.ptr()) < 0) throw py::error_already_set();
  if (PyObject_SetAttr(ctx.ptr(), s_stats, r.second.ptr()) < 0) throw py::error_already_set();
  return r.first;
}

py::object layernorm_fast(py::handle x_obj, py::handle ns, py::handle w_obj, py::handle b_obj, py::handle eps_obj) {
  FastState& f = fast();
  if (!f.ready) return py::none();
  Arg x, w, b;
  bool grad = false;
  if (!peek(x_obj.ptr(), x, grad) || x.shape.empty() || x.last() < 1) return py::none();
  const int64_t C = x.last(), n = x.numel();
  // normalized_shape: an int, or a tuple / list / torch.Size of one int, equal to C
  PyObject* nso = ns.ptr();
  if ((PyTuple_Check(nso) && PyTuple_GET_SIZE(nso) == 1) || (PyList_Check(nso) && PyList_GET_SIZE(nso) == 1))
    nso = PySequence_Fast_GET_ITEM(nso, 0);
  if (!PyLong_CheckExact(nso) || PyLong_AsLongLong(nso) != C) {
    PyErr_Clear();
    return py::none();
  }
  for (auto [o, a] : {std::pair<py::handle, Arg*>{w_obj, &w}, {b_obj, &b}}) {
    if (o.is_none()) continue;
    if (!peek(o.ptr(), *a, grad) || a->d != x.d || a->shape.size() != 1 || a->shape[0] != C) return py::none();
  }
  double eps;
  if (PyFloat_CheckExact(eps_obj.ptr())) eps = PyFloat_AS_DOUBLE(eps_obj.ptr());
  else return py::none();
  if (!(eps >= 0) || n < 1 || call_true(f.functorch_active)) return py::none();
  if (!f.layer_norm.ours[x.d == DType::f64][bucket(n)]) {
    count(f.layer_norm.key_torch);
    PyObject* y = PyObject_CallFunctionObjArgs(f.layer_norm.original, x_obj.ptr(), ns.ptr(), w_obj.ptr(),
                                               b_obj.ptr(), eps_obj.ptr(), nullptr);
    if (!y) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(y);
  }
  count(f.layer_norm.key_ours);
  if (!(grad && call_true(f.grad_enabled))) return layernorm_run(x, w, b, eps).first;
  LayerNormStash st{x_obj.ptr(), w_obj.ptr(), b_obj.ptr(), {std::move(x), std::move(w), std::move(b)}};
  ln_stash = &st;
  PyObject* y = PyObject_CallFunctionObjArgs(f.layer_norm.apply, x_obj.ptr(), w_obj.ptr(), b_obj.ptr(),
                                             eps_obj.ptr(), nullptr);
  ln_stash = nullptr;  // (taken by the forward, unless apply failed before calling it)
  if (!y) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(y);
}

void fast_setup(py::handle parameter, py::handle grad_enabled, py::handle functorch_active, py::handle counts,
                py::handle ln_apply, py::handle ln_original, py::handle ln_keys) {
  FastState& f = fast();
  if (!PyDict_Check(counts.ptr())) type_error("_torch_fast_setup: counts must be a dict (collections.Counter)");
  auto keep = [](py::handle o) { return py::reinterpret_borrow<py::object>(o).release().ptr(); };
  f.parameter = keep(parameter);
  f.grad_enabled = keep(grad_enabled);
  f.functorch_active = keep(functorch_active);
  f.counts = keep(counts);
  f.s_requires_grad = PyUnicode_InternFromString("requires_grad");
  py::tuple keys = py::reinterpret_borrow<py::tuple>(ln_keys);
  f.layer_norm.apply = keep(ln_apply);
  f.layer_norm.original = keep(ln_original);
  f.layer_norm.key_torch = keep(keys[0]);
  f.layer_norm.key_ours = keep(keys[1]);
  torch_refs();
  f.ready = true;
}

void fast_policy(const std::string& op, py::bytes f32, py::bytes f64) {
  if (op != "layer_norm") value_error(cat("_torch_fast_policy: no fast path for op '", op, "'"));
  const std::string a = f32, b = f64;
  if (a.size() != 64 || b.size() != 64) value_error("_torch_fast_policy: want 64 bytes per dtype (one per bucket)");
  auto& o = fast().layer_norm.ours;
  for (int i = 0; i < 64; ++i) {
    o[0][i] = a[i] != 0;
    o[1][i] = b[i] != 0;
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
  m.def("_torch_layernorm_ctx_forward", &layernorm_ctx_fwd, py::arg("ctx"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"),
        "fusegrad.torch's layer_norm autograd.Function forward: y; saves x and weight (ctx.to_save),\n"
        "ctx.stats = one (2, ...) array of mean and rstd.");
  m.def("_torch_layernorm_ctx_backward", &layernorm_ctx_bwd, py::arg("ctx"), py::arg("dy"),
        "fusegrad.torch's layer_norm autograd.Function backward: (dx, dweight, dbias, None), from what\n"
        "_torch_layernorm_ctx_forward saved.");
  m.def("_torch_fast_setup", &fast_setup, "fusegrad.torch's state for the eager fast paths (called once at import).");
  m.def("_torch_fast_policy", &fast_policy, py::arg("op"), py::arg("float32"), py::arg("float64"),
        "The policy's choice per size bucket (64 bytes per dtype, 1 = fusegrad), pushed on every policy change.");
}

}  // namespace fg::bind
