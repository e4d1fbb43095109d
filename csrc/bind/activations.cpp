// Bindings for the activations op stem (csrc/ops/activations.h).
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/activations.h"

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
py::array unary_backward(const py::object& dy_obj, const py::object& x_obj, const char* fn) {
  py::array dy = as_array(dy_obj, fn, "dy"), x = as_array(x_obj, fn, "x");
  DType d = float_input(x, fn, "x");
  check_dtype(dy, d, fn, "dy");
  check_contiguous(dy, fn, "dy");
  check_same_shape(dy, x, fn, "dy", "x");
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

}  // namespace

void bind_activations(py::module_& m) {
  m.def("relu_forward", [](const py::object& x) {
    return unary_forward<relu_forward<float>, relu_forward<double>>(x, "relu_forward");
  }, py::arg("x"), "y = max(x, 0), elementwise.");
  m.def("relu_backward", [](const py::object& dy, const py::object& x) {
    return unary_backward<relu_backward<float>, relu_backward<double>>(dy, x, "relu_backward");
  }, py::arg("dy"), py::arg("x"), "dx = dy where x > 0, else 0.");
}

}  // namespace fg::bind
