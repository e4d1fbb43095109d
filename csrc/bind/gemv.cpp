// Bindings for the skinny-product stem (csrc/ops/gemv.h): gemv with float32 or bfloat16
// (uint16) weights and the bf16 conversions; argument checks, then the kernel without the GIL.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/gemv.h"

namespace fg::bind {

namespace {

bool is_u16(const py::array& a) {
  const py::dtype dt = a.dtype();
  return dt.kind() == 'u' && dt.itemsize() == 2 && native_byte_order(dt);
}

// A float32 array, C-contiguous, or a TypeError/ValueError naming it.
void f32_input(const py::array& a, const char* fn, const char* name) {
  if (dtype_of(a) != DType::f32) type_error(cat(fn, ": ", name, " must be float32, got ", dtype_str(a)));
  check_contiguous(a, fn, name);
}

py::array gemv_py(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                  const py::object& r_obj) {
  const char* fn = "gemv";
  py::array x = as_array(x_obj, fn, "x"), w = as_array(w_obj, fn, "w");
  f32_input(x, fn, "x");
  const bool bf16 = is_u16(w);
  if (!bf16 && dtype_of(w) != DType::f32)
    type_error(cat(fn, ": w must be float32 or uint16 (bfloat16 bit patterns), got ", dtype_str(w)));
  check_contiguous(w, fn, "w");
  check_min_ndim(x, 1, fn, "x");
  check_ndim(w, 2, fn, "w");
  const int64_t IN = last_dim(x), M = rows_of(x), OUT = w.shape(0);
  if (w.shape(1) != IN)
    value_error(cat(fn, ": w must have shape (out_features, ", IN, ") to match x ", shape_str(x), ", got ", shape_str(w)));
  const float* pb = nullptr;
  if (!b_obj.is_none()) {
    py::array b = as_array(b_obj, fn, "b");
    f32_input(b, fn, "b");
    check_shape(b, {OUT}, fn, "b");
    pb = cptr<float>(b);
  }
  std::vector<py::ssize_t> ys = shape_of(x);
  ys.back() = OUT;
  const float* pr = nullptr;
  if (!r_obj.is_none()) {
    py::array r = as_array(r_obj, fn, "residual");
    f32_input(r, fn, "residual");
    check_shape(r, std::vector<int64_t>(ys.begin(), ys.end()), fn, "residual");
    pr = cptr<float>(r);
  }
  py::array y = py::array_t<float>(ys);
  float* py_ = ptr<float>(y);
  const float* px = cptr<float>(x);
  py::gil_scoped_release nogil;
  if (bf16)
    gemv_bf16(py_, px, cptr<uint16_t>(w), pb, M, IN, OUT, pr);
  else
    gemv(py_, px, cptr<float>(w), pb, M, IN, OUT, pr);
  return y;
}

}  // namespace

void bind_gemv(py::module_& m) {
  m.def("gemv", &gemv_py, py::arg("x"), py::arg("w"), py::arg("b") = py::none(), py::arg("residual") = py::none(),
        "y = x @ w.T + b (+ residual) for few rows of x (decode steps): x (..., in) float32,\n"
        "w (out, in) float32 or uint16 holding bfloat16 bits (widened in registers, float32\n"
        "accumulation), b (out,) or None, residual (..., out) or None. Streams w once, unpacked.\n\n"
        ">>> import numpy as np; from fusegrad import ops\n"
        ">>> ops.gemv(np.ones((1, 3), np.float32), np.ones((2, 3), np.float32))\n"
        "array([[3., 3.]], dtype=float32)");
  m.def("_bf16_from_float32", [](const py::object& a_obj) {
    const char* fn = "bf16_from_float32";
    py::array a = as_array(a_obj, fn, "a");
    f32_input(a, fn, "a");
    py::array out = py::array_t<uint16_t>(shape_of(a));
    uint16_t* po = ptr<uint16_t>(out);
    const float* pa = cptr<float>(a);
    const int64_t n = a.size();
    py::gil_scoped_release nogil;
    bf16_from_float(po, pa, n);
    return out;
  }, py::arg("a"), "bfloat16 bit patterns (uint16) of a float32 array, rounded to nearest even.");
  m.def("_bf16_to_float32", [](const py::object& a_obj) {
    const char* fn = "bf16_to_float32";
    py::array a = as_array(a_obj, fn, "a");
    if (!is_u16(a)) type_error(cat(fn, ": a must be uint16 (bfloat16 bit patterns), got ", dtype_str(a)));
    check_contiguous(a, fn, "a");
    py::array out = py::array_t<float>(shape_of(a));
    float* po = ptr<float>(out);
    const uint16_t* pa = cptr<uint16_t>(a);
    const int64_t n = a.size();
    py::gil_scoped_release nogil;
    bf16_to_float(po, pa, n);
    return out;
  }, py::arg("a"), "float32 values of bfloat16 bit patterns (uint16); exact.");
}

}  // namespace fg::bind
