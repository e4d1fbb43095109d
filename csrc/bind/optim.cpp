// Bindings for the optim op stem (csrc/ops/optim.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/optim.h"

#include <cmath>

namespace fg::bind {

namespace {

void check_buffer(const py::array& a, DType d, const py::array& param, const char* fn, const char* name, bool write) {
  check_dtype(a, d, fn, name);
  check_same_shape(a, param, fn, name, "param");
  check_contiguous(a, fn, name);
  if (write) check_writeable(a, fn, name);
}

void check_finite_nonneg(double x, const char* fn, const char* name) {
  if (!std::isfinite(x) || x < 0) value_error(cat(fn, ": ", name, " must be a finite number >= 0, got ", x));
}
void check_beta(double x, const char* fn, const char* name) {
  if (!(x >= 0 && x < 1)) value_error(cat(fn, ": ", name, " must be in [0, 1), got ", x));
}

void adam_impl(const py::object& p_obj, const py::object& g_obj, const py::object& m_obj, const py::object& v_obj,
               int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
               const char* fn) {
  py::array p = as_array(p_obj, fn, "param"), g = as_array(g_obj, fn, "grad");
  py::array m = as_array(m_obj, fn, "m"), v = as_array(v_obj, fn, "v");
  DType d = float_input(p, fn, "param");
  check_writeable(p, fn, "param");
  check_buffer(g, d, p, fn, "grad", false);
  check_buffer(m, d, p, fn, "m", true);
  check_buffer(v, d, p, fn, "v", true);
  check_no_alias(p, g, fn, "param", "grad");
  check_no_alias(p, m, fn, "param", "m");
  check_no_alias(p, v, fn, "param", "v");
  check_no_alias(m, g, fn, "m", "grad");
  check_no_alias(v, g, fn, "v", "grad");
  check_no_alias(m, v, fn, "m", "v");
  if (step < 1) value_error(cat(fn, ": step must be >= 1, got ", step));
  check_finite_nonneg(lr, fn, "lr");
  check_beta(beta1, fn, "beta1");
  check_beta(beta2, fn, "beta2");
  if (!std::isfinite(eps) || eps <= 0) value_error(cat(fn, ": eps must be a finite number > 0, got ", eps));
  check_finite_nonneg(weight_decay, fn, "weight_decay");
  const int64_t n = p.size();
  dispatch_float(d, [&](auto tag) {
    using T = decltype(tag);
    T *pp = ptr<T>(p), *pm = ptr<T>(m), *pv = ptr<T>(v);
    const T* pg = cptr<T>(g);
    py::gil_scoped_release nogil;
    adam_step<T>(pp, pm, pv, pg, n, step, lr, beta1, beta2, eps, weight_decay, decoupled);
  });
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def("sum_squares", [](const py::object& x_obj) {
    const char* fn = "sum_squares";
    py::array x = as_array(x_obj, fn, "x");
    DType d = float_input(x, fn, "x");
    const int64_t n = x.size();
    return dispatch_float(d, [&](auto tag) -> double {
      using T = decltype(tag);
      const T* px = cptr<T>(x);
      py::gil_scoped_release nogil;
      return sum_squares<T>(px, n);
    });
  }, py::arg("x"),
     "sum of x**2 over all elements, accumulated in float64 (clip_grad_norm_'s norm): fixed chunks summed\n"
     "in order, so the result does not depend on the thread count. NaN and inf propagate.");
  m.def("sgd_step", [](const py::object& p_obj, const py::object& g_obj, const py::object& m_obj, double lr,
                       double momentum, double weight_decay, bool nesterov, double dampening, bool first_step) {
    const char* fn = "sgd_step";
    py::array p = as_array(p_obj, fn, "param"), g = as_array(g_obj, fn, "grad");
    DType d = float_input(p, fn, "param");
    check_writeable(p, fn, "param");
    check_buffer(g, d, p, fn, "grad", false);
    check_no_alias(p, g, fn, "param", "grad");
    check_finite_nonneg(lr, fn, "lr");
    check_finite_nonneg(momentum, fn, "momentum");
    check_finite_nonneg(weight_decay, fn, "weight_decay");
    if (!std::isfinite(dampening)) value_error(cat(fn, ": dampening must be finite, got ", dampening));
    if (nesterov && (momentum <= 0 || dampening != 0))
      value_error(cat(fn, ": nesterov requires momentum > 0 and dampening == 0, got momentum=", momentum, ", dampening=", dampening));
    py::array mb;
    if (momentum != 0) {
      if (m_obj.is_none()) value_error(cat(fn, ": momentum_buf must be an array when momentum != 0, got None"));
      mb = as_array(m_obj, fn, "momentum_buf");
      check_buffer(mb, d, p, fn, "momentum_buf", true);
      check_no_alias(p, mb, fn, "param", "momentum_buf");
      check_no_alias(mb, g, fn, "momentum_buf", "grad");
    }
    const int64_t n = p.size();
    dispatch_float(d, [&](auto tag) {
      using T = decltype(tag);
      T* pp = ptr<T>(p);
      T* pm = momentum != 0 ? ptr<T>(mb) : nullptr;
      const T* pg = cptr<T>(g);
      py::gil_scoped_release nogil;
      sgd_step<T>(pp, pm, pg, n, lr, momentum, weight_decay, nesterov, dampening, first_step);
    });
  }, py::arg("param"), py::arg("grad"), py::arg("momentum_buf"), py::arg("lr"), py::arg("momentum") = 0.0,
     py::arg("weight_decay") = 0.0, py::arg("nesterov") = false, py::arg("dampening") = 0.0,
     py::arg("first_step") = false,
     "In-place torch.optim.SGD step on param (and momentum_buf). first_step: buf = grad (torch's init).");
  m.def("adamw_step", [](const py::object& p, const py::object& g, const py::object& mm, const py::object& v,
                         int64_t step, double lr, double beta1, double beta2, double eps, double wd) {
    adam_impl(p, g, mm, v, step, lr, beta1, beta2, eps, wd, true, "adamw_step");
  }, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("step"), py::arg("lr"),
     py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.01,
     "In-place torch.optim.AdamW step (decoupled weight decay, bias correction; step >= 1).");
  m.def("adam_step", [](const py::object& p, const py::object& g, const py::object& mm, const py::object& v,
                        int64_t step, double lr, double beta1, double beta2, double eps, double wd) {
    adam_impl(p, g, mm, v, step, lr, beta1, beta2, eps, wd, false, "adam_step");
  }, py::arg("param"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("step"), py::arg("lr"),
     py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0,
     "In-place torch.optim.Adam step (L2 weight decay added to grad; step >= 1).");
}

}  // namespace fg::bind
