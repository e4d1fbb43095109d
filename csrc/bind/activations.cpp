// Bindings for the activations op stem (csrc/ops/activations.h).
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/activations.h"

#include <string>

namespace fg::bind {

namespace {

// y = f(x), any shape; float32/float64; x contiguous.
template <void (*F32)(float*, const float*, int64_t), void (*F64)(double*, const double*, int64_t)>
py::array unary_forward(const py::object& x_obj, const char* fn) {
  py::array x = as_array(x_obj, fn, "x");
  DType d = float_input(x, fn, "x");
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = py::array_t<T>(shape_of(x));
    const int64_t n = x.size();
    T* py_ = ptr<T>(y);
    const T* px = cptr<T>(x);
    py::gil_scoped_release nogil;
    if constexpr (std::is_same_v<T, float>) F32(py_, px, n); else F64(py_, px, n);
    return y;
  });
}

// dx = f'(x) * dy; dy and x of one shape and dtype.
template <void (*F32)(float*, const float*, const float*, int64_t),
          void (*F64)(double*, const double*, const double*, int64_t)>
py::array unary_backward(const py::object& dy_obj, const py::object& x_obj, const char* fn, const char* xname = "x") {
  py::array dy = as_array(dy_obj, fn, "dy"), x = as_array(x_obj, fn, xname);
  DType d = float_input(x, fn, xname);
  check_dtype(dy, d, fn, "dy");
  check_contiguous(dy, fn, "dy");
  check_same_shape(dy, x, fn, "dy", xname);
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = py::array_t<T>(shape_of(x));
    const int64_t n = x.size();
    T* pdx = ptr<T>(dx);
    const T *pdy = cptr<T>(dy), *px = cptr<T>(x);
    py::gil_scoped_release nogil;
    if constexpr (std::is_same_v<T, float>) F32(pdx, pdy, px, n); else F64(pdx, pdy, px, n);
    return dx;
  });
}

template <typename T, bool A> void gelu_fwd(T* y, const T* x, int64_t n) { gelu_forward<T>(y, x, n, A); }
template <typename T, bool A> void gelu_bwd(T* dx, const T* dy, const T* x, int64_t n) { gelu_backward<T>(dx, dy, x, n, A); }

template <typename T> void gelu_bwd_grad(T* dx, const T* dy, const T* d, int64_t n) { gelu_backward_from_grad<T>(dx, dy, d, n); }

bool gelu_mode(const std::string& approximate, const char* fn) {
  if (approximate == "none") return false;
  if (approximate == "tanh") return true;
  value_error(cat(fn, ": approximate must be 'none' or 'tanh', got '", approximate, "'"));
}

}  // namespace

void bind_activations(py::module_& m) {
  m.def("gelu_forward", [](const py::object& x, const std::string& approximate) {
    const bool t = gelu_mode(approximate, "gelu_forward");
    if (t) return unary_forward<gelu_fwd<float, true>, gelu_fwd<double, true>>(x, "gelu_forward");
    return unary_forward<gelu_fwd<float, false>, gelu_fwd<double, false>>(x, "gelu_forward");
  }, py::arg("x"), py::arg("approximate") = "none",
     "y = x * Phi(x) (approximate='none', erf) or the tanh approximation (approximate='tanh').");
  m.def("gelu_backward", [](const py::object& dy, const py::object& x, const std::string& approximate) {
    const bool t = gelu_mode(approximate, "gelu_backward");
    if (t) return unary_backward<gelu_bwd<float, true>, gelu_bwd<double, true>>(dy, x, "gelu_backward");
    return unary_backward<gelu_bwd<float, false>, gelu_bwd<double, false>>(dy, x, "gelu_backward");
  }, py::arg("dy"), py::arg("x"), py::arg("approximate") = "none", "dx = dy * gelu'(x), from the forward INPUT x.");
  m.def("gelu_forward_with_grad", [](const py::object& x_obj, const std::string& approximate) {
    const char* fn = "gelu_forward_with_grad";
    const bool t = gelu_mode(approximate, fn);
    py::array x = as_array(x_obj, fn, "x");
    DType d = float_input(x, fn, "x");
    return dispatch_float(d, [&](auto tag) -> py::tuple {
      using T = decltype(tag);
      py::array y = py::array_t<T>(shape_of(x)), dydx = py::array_t<T>(shape_of(x));
      const int64_t n = x.size();
      T *py_ = ptr<T>(y), *pd = ptr<T>(dydx);
      const T* px = cptr<T>(x);
      {
        py::gil_scoped_release nogil;
        gelu_forward_with_grad<T>(py_, pd, px, n, t);
      }
      return py::make_tuple(y, dydx);
    });
  }, py::arg("x"), py::arg("approximate") = "none",
     "(y, dydx): gelu_forward's y and the derivative gelu'(x) in one pass, for training: save dydx\n"
     "instead of x, and the backward is gelu_backward_from_grad(dy, dydx).");
  m.def("gelu_backward_from_grad", [](const py::object& dy, const py::object& dydx) {
    return unary_backward<gelu_bwd_grad<float>, gelu_bwd_grad<double>>(dy, dydx, "gelu_backward_from_grad", "dydx");
  }, py::arg("dy"), py::arg("dydx"), "dx = dy * dydx, dydx from gelu_forward_with_grad.");
  // erf / erfc elementwise: the kernels inside the exact GELU, bound for their accuracy tests
  // (underscored: not part of fusegrad.ops)
  m.def("_erf", [](const py::object& x) {
    return unary_forward<erf_forward<float>, erf_forward<double>>(x, "_erf");
  }, py::arg("x"), "erf(x), elementwise (float32 SIMD paths: a few ulp of the float64 value).");
  m.def("_erfc", [](const py::object& x) {
    return unary_forward<erfc_forward<float>, erfc_forward<double>>(x, "_erfc");
  }, py::arg("x"), "erfc(x), elementwise.");
  m.def("sigmoid_forward", [](const py::object& x) {
    return unary_forward<sigmoid_forward<float>, sigmoid_forward<double>>(x, "sigmoid_forward");
  }, py::arg("x"), "y = 1 / (1 + exp(-x)), elementwise.");
  m.def("sigmoid_backward", [](const py::object& dy, const py::object& y) {
    return unary_backward<sigmoid_backward<float>, sigmoid_backward<double>>(dy, y, "sigmoid_backward", "y");
  }, py::arg("dy"), py::arg("y"), "dx = dy * y * (1 - y), from the forward OUTPUT y.");
  m.def("tanh_forward", [](const py::object& x) {
    return unary_forward<tanh_forward<float>, tanh_forward<double>>(x, "tanh_forward");
  }, py::arg("x"), "y = tanh(x), elementwise.");
  m.def("tanh_backward", [](const py::object& dy, const py::object& y) {
    return unary_backward<tanh_backward<float>, tanh_backward<double>>(dy, y, "tanh_backward", "y");
  }, py::arg("dy"), py::arg("y"), "dx = dy * (1 - y^2), from the forward OUTPUT y.");
  m.def("relu_forward", [](const py::object& x) {
    return unary_forward<relu_forward<float>, relu_forward<double>>(x, "relu_forward");
  }, py::arg("x"), "y = max(x, 0), elementwise.");
  m.def("relu_backward", [](const py::object& dy, const py::object& x) {
    return unary_backward<relu_backward<float>, relu_backward<double>>(dy, x, "relu_backward");
  }, py::arg("dy"), py::arg("x"), "dx = dy where x > 0, else 0.");
}

}  // namespace fg::bind
