// Bindings for the softmax_xent op stem (csrc/ops/softmax_xent.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/softmax_xent.h"

namespace fg::bind {

namespace {

// y = f(x) over the last axis; x float, contiguous, ndim >= 1.
template <void (*F32)(float*, const float*, int64_t, int64_t), void (*F64)(double*, const double*, int64_t, int64_t)>
py::array rows_forward(const py::object& x_obj, const char* fn) {
  py::array x = as_array(x_obj, fn, "x");
  DType d = float_input(x, fn, "x");
  check_min_ndim(x, 1, fn, "x");
  const int64_t N = rows_of(x), V = last_dim(x);
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = py::array_t<T>(shape_of(x));
    T* py_ = ptr<T>(y);
    const T* px = cptr<T>(x);
    py::gil_scoped_release nogil;
    if (V > 0) { if constexpr (std::is_same_v<T, float>) F32(py_, px, N, V); else F64(py_, px, N, V); }
    return y;
  });
}

template <void (*F32)(float*, const float*, const float*, int64_t, int64_t),
          void (*F64)(double*, const double*, const double*, int64_t, int64_t)>
py::array rows_backward(const py::object& dy_obj, const py::object& y_obj, const char* fn) {
  py::array y = as_array(y_obj, fn, "y");
  DType d = float_input(y, fn, "y");
  check_min_ndim(y, 1, fn, "y");
  py::array dy = as_array(dy_obj, fn, "dy");
  check_dtype(dy, d, fn, "dy");
  check_same_shape(dy, y, fn, "dy", "y");
  check_contiguous(dy, fn, "dy");
  const int64_t N = rows_of(y), V = last_dim(y);
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = py::array_t<T>(shape_of(y));
    T* pdx = ptr<T>(dx);
    const T *pdy = cptr<T>(dy), *py_ = cptr<T>(y);
    py::gil_scoped_release nogil;
    if (V > 0) { if constexpr (std::is_same_v<T, float>) F32(pdx, pdy, py_, N, V); else F64(pdx, pdy, py_, N, V); }
    return dx;
  });
}

// logits (N, V) float contiguous, V >= 1; targets (N,) int32/int64 contiguous, each in [0, V) or ignore_index.
DType check_xent(const py::array& logits, const py::array& targets, int64_t ignore_index, const char* fn, DType* ti) {
  DType d = float_input(logits, fn, "logits");
  check_ndim(logits, 2, fn, "logits");
  const int64_t N = logits.shape(0), V = logits.shape(1);
  if (V < 1) value_error(cat(fn, ": logits must have at least 1 class (V >= 1), got shape ", shape_str(logits)));
  *ti = check_index(targets, fn, "targets");
  check_shape(targets, {N}, fn, "targets");
  check_contiguous(targets, fn, "targets");
  auto scan = [&](auto* p) {
    for (int64_t r = 0; r < N; ++r) {
      const int64_t t = static_cast<int64_t>(p[r]);
      if (t != ignore_index && (t < 0 || t >= V))
        value_error(cat(fn, ": targets[", r, "] = ", t, " is out of range [0, ", V, ") and is not ignore_index (", ignore_index, ")"));
    }
  };
  if (*ti == DType::i32) scan(static_cast<const int32_t*>(targets.data()));
  else scan(static_cast<const int64_t*>(targets.data()));
  return d;
}

py::tuple xent_forward(const py::object& l_obj, const py::object& t_obj, int64_t ignore_index) {
  const char* fn = "cross_entropy_forward";
  py::array logits = as_array(l_obj, fn, "logits"), targets = as_array(t_obj, fn, "targets");
  DType ti;
  DType d = check_xent(logits, targets, ignore_index, fn, &ti);
  const int64_t N = logits.shape(0), V = logits.shape(1);
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array lse = py::array_t<T>({N});
    T* pl = ptr<T>(lse);
    const T* px = cptr<T>(logits);
    double loss;
    {
      py::gil_scoped_release nogil;
      if (ti == DType::i32) loss = cross_entropy_forward<T, int32_t>(pl, px, cptr<int32_t>(targets), ignore_index, N, V);
      else loss = cross_entropy_forward<T, int64_t>(pl, px, cptr<int64_t>(targets), ignore_index, N, V);
    }
    py::array_t<T> out(std::vector<py::ssize_t>{});
    *static_cast<T*>(out.mutable_data()) = static_cast<T>(loss);
    return py::make_tuple(out, lse);
  });
}

py::array xent_backward(const py::object& l_obj, const py::object& t_obj, const py::object& lse_obj,
                        const py::object& dloss_obj, int64_t ignore_index) {
  const char* fn = "cross_entropy_backward";
  py::array logits = as_array(l_obj, fn, "logits"), targets = as_array(t_obj, fn, "targets");
  DType ti;
  DType d = check_xent(logits, targets, ignore_index, fn, &ti);
  const int64_t N = logits.shape(0), V = logits.shape(1);
  py::array lse = as_array(lse_obj, fn, "lse");
  check_dtype(lse, d, fn, "lse");
  check_shape(lse, {N}, fn, "lse");
  check_contiguous(lse, fn, "lse");
  double dloss;
  if (py::isinstance<py::array>(dloss_obj)) {
    py::array a = py::reinterpret_borrow<py::array>(dloss_obj);
    if (a.size() != 1) value_error(cat(fn, ": dloss must be a scalar or a 1-element array, got shape ", shape_str(a)));
    dloss = py::float_(a.attr("item")()).cast<double>();
  } else {
    try { dloss = dloss_obj.cast<double>(); }
    catch (const py::cast_error&) { type_error(cat(fn, ": dloss must be a float, got ", py::str(py::type::of(dloss_obj).attr("__name__")).cast<std::string>())); }
  }
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dl = py::array_t<T>(shape_of(logits));
    T* pd = ptr<T>(dl);
    const T *px = cptr<T>(logits), *pl = cptr<T>(lse);
    py::gil_scoped_release nogil;
    if (ti == DType::i32) cross_entropy_backward<T, int32_t>(pd, px, cptr<int32_t>(targets), pl, dloss, ignore_index, N, V);
    else cross_entropy_backward<T, int64_t>(pd, px, cptr<int64_t>(targets), pl, dloss, ignore_index, N, V);
    return dl;
  });
}

}  // namespace

void bind_softmax_xent(py::module_& m) {
  m.def("softmax_forward", [](const py::object& x) {
    return rows_forward<softmax_forward<float>, softmax_forward<double>>(x, "softmax_forward");
  }, py::arg("x"), "y = softmax(x) over the last axis.");
  m.def("softmax_backward", [](const py::object& dy, const py::object& y) {
    return rows_backward<softmax_backward<float>, softmax_backward<double>>(dy, y, "softmax_backward");
  }, py::arg("dy"), py::arg("y"), "dx = y * (dy - sum(dy * y, -1)), from the forward OUTPUT y.");
  m.def("log_softmax_forward", [](const py::object& x) {
    return rows_forward<log_softmax_forward<float>, log_softmax_forward<double>>(x, "log_softmax_forward");
  }, py::arg("x"), "y = x - logsumexp(x) over the last axis.");
  m.def("log_softmax_backward", [](const py::object& dy, const py::object& y) {
    return rows_backward<log_softmax_backward<float>, log_softmax_backward<double>>(dy, y, "log_softmax_backward");
  }, py::arg("dy"), py::arg("y"), "dx = dy - exp(y) * sum(dy, -1), from the forward OUTPUT y.");
  m.def("cross_entropy_forward", &xent_forward, py::arg("logits"), py::arg("targets"), py::arg("ignore_index") = -100,
        "(loss, lse): mean over rows with targets != ignore_index of lse - logits[target]; loss is a 0-d array "
        "of the logits dtype (NaN when every row is ignored, like PyTorch); lse: (N,).");
  m.def("cross_entropy_backward", &xent_backward, py::arg("logits"), py::arg("targets"), py::arg("lse"), py::arg("dloss"),
        py::arg("ignore_index") = -100,
        "dlogits = dloss / count * (softmax(logits) - onehot(targets)), 0 on ignored rows; fused, no stored probabilities.");
}

}  // namespace fg::bind
