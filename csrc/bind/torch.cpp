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
py::tuple layernorm_fwd(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
  const char* fn = "_torch_layernorm_forward";
  Arg x = read(x_obj, fn, "x");
  const DType d = float_arg(x, fn, "x");
  if (x.shape.empty()) value_error(cat(fn, ": x must have at least 1 dimension, got shape ()"));
  const int64_t N = x.rows(), C = x.last();
  if (C < 1) value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(x.shape)));
  if (!(eps >= 0)) value_error(cat(fn, ": eps must be >= 0, got ", eps));
  Arg w = read_param(w_obj, d, C, fn, "weight"), b = read_param(b_obj, d, C, fn, "bias");
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    std::vector<int64_t> rs(x.shape.begin(), x.shape.end() - 1);
    py::array y = alloc<T>(x.shape), mean = alloc<T>(rs), rstd = alloc<T>(rs);
    T *py_ = ptr<T>(y), *pm = ptr<T>(mean), *pr = ptr<T>(rstd);
    {
      py::gil_scoped_release nogil;
      layernorm_forward<T>(py_, pm, pr, p<T>(x), p<T>(w), p<T>(b), N, C, eps);
    }
    return py::make_tuple(to_torch(y), mean, rstd);
  });
}

py::tuple layernorm_bwd(py::handle dy_obj, py::handle x_obj, py::handle w_obj, py::handle mean_obj,
                        py::handle rstd_obj) {
  const char* fn = "_torch_layernorm_backward";
  Arg x = read(x_obj, fn, "x");
  const DType d = float_arg(x, fn, "x");
  if (x.shape.empty() || x.last() < 1)
    value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(x.shape)));
  const int64_t N = x.rows(), C = x.last();
  Arg dy = read(dy_obj, fn, "dy");
  same_dtype(dy, d, fn, "dy");
  want_shape(dy, x.shape, fn, "dy");
  Arg w = read_param(w_obj, d, C, fn, "weight");
  const std::vector<int64_t> rs(x.shape.begin(), x.shape.end() - 1);
  Arg mean = read(mean_obj, fn, "mean", true), rstd = read(rstd_obj, fn, "rstd", true);
  same_dtype(mean, d, fn, "mean");
  want_shape(mean, rs, fn, "mean");
  same_dtype(rstd, d, fn, "rstd");
  want_shape(rstd, rs, fn, "rstd");
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dx = alloc<T>(x.shape), dw = alloc<T>({C}), db = alloc<T>({C});
    T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
    {
      py::gil_scoped_release nogil;
      layernorm_backward<T>(pdx, pdw, pdb, p<T>(dy), p<T>(x), p<T>(w), p<T>(mean), p<T>(rstd), N, C);
    }
    return py::make_tuple(to_torch(dx), to_torch(dw), to_torch(db));
  });
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
}

}  // namespace fg::bind
