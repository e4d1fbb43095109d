// Bindings for the layernorm op stem (csrc/ops/layernorm.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/layernorm.h"

namespace fg::bind {

namespace {

// weight/bias: None or a contiguous (C,) array of dtype d. Returns the array or None.
py::object optional_param(const py::object& o, DType d, int64_t C, const char* fn, const char* name) {
  if (o.is_none()) return o;
  py::array a = as_array(o, fn, name);
  check_dtype(a, d, fn, name);
  check_shape(a, {C}, fn, name);
  check_contiguous(a, fn, name);
  return std::move(a);
}
template <typename T>
const T* opt_ptr(const py::object& o) {
  return o.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(o).data());
}
std::vector<py::ssize_t> row_shape(const py::array& x) {
  return std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim() - 1);
}

py::tuple forward(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj, double eps) {
  const char* fn = "layernorm_forward";
  py::array x = as_array(x_obj, fn, "x");
  DType d = float_input(x, fn, "x");
  check_min_ndim(x, 1, fn, "x");
  const int64_t N = rows_of(x), C = last_dim(x);
  if (C < 1) value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(x)));
  if (!(eps >= 0)) value_error(cat(fn, ": eps must be >= 0, got ", eps));
  py::object w = optional_param(w_obj, d, C, fn, "weight"), b = optional_param(b_obj, d, C, fn, "bias");
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = py::array_t<T>(shape_of(x)), mean = py::array_t<T>(row_shape(x)), rstd = py::array_t<T>(row_shape(x));
    T *py_ = ptr<T>(y), *pm = ptr<T>(mean), *pr = ptr<T>(rstd);
    const T *px = cptr<T>(x), *pw = opt_ptr<T>(w), *pb = opt_ptr<T>(b);
    {
      py::gil_scoped_release nogil;
      layernorm_forward<T>(py_, pm, pr, px, pw, pb, N, C, eps);
    }
    return py::make_tuple(y, mean, rstd);
  });
}

py::tuple backward(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj,
                   const py::object& mean_obj, const py::object& rstd_obj) {
  const char* fn = "layernorm_backward";
  py::array x = as_array(x_obj, fn, "x");
  DType d = float_input(x, fn, "x");
  check_min_ndim(x, 1, fn, "x");
  const int64_t N = rows_of(x), C = last_dim(x);
  if (C < 1) value_error(cat(fn, ": x must have a last dimension of at least 1, got shape ", shape_str(x)));
  py::array dy = as_array(dy_obj, fn, "dy");
  check_dtype(dy, d, fn, "dy");
  check_same_shape(dy, x, fn, "dy", "x");
  check_contiguous(dy, fn, "dy");
  py::object w = optional_param(w_obj, d, C, fn, "weight");
  std::vector<int64_t> rs(x.shape(), x.shape() + x.ndim() - 1);
  py::array mean = as_array(mean_obj, fn, "mean"), rstd = as_array(rstd_obj, fn, "rstd");
  check_dtype(mean, d, fn, "mean");
  check_shape(mean, rs, fn, "mean");
  check_contiguous(mean, fn, "mean");
  check_dtype(rstd, d, fn, "rstd");
  check_shape(rstd, rs, fn, "rstd");
  check_contiguous(rstd, fn, "rstd");
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dx = py::array_t<T>(shape_of(x)), dw = py::array_t<T>({C}), db = py::array_t<T>({C});
    T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
    const T *pdy = cptr<T>(dy), *px = cptr<T>(x), *pw = opt_ptr<T>(w), *pm = cptr<T>(mean), *pr = cptr<T>(rstd);
    {
      py::gil_scoped_release nogil;
      layernorm_backward<T>(pdx, pdw, pdb, pdy, px, pw, pm, pr, N, C);
    }
    return py::make_tuple(dx, dw, db);
  });
}

}  // namespace

void bind_layernorm(py::module_& m) {
  m.def("layernorm_forward", &forward, py::arg("x"), py::arg("weight") = py::none(), py::arg("bias") = py::none(),
        py::arg("eps") = 1e-5,
        "(y, mean, rstd) = layer norm of x over its last axis; weight/bias (C,) or None. mean, rstd: x.shape[:-1].");
  m.def("layernorm_backward", &backward, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        "(dx, dweight, dbias) from dy and the forward's x, weight (or None), mean, rstd. dweight/dbias are always (C,).");
}

}  // namespace fg::bind
