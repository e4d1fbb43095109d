// Bindings for the loss op stem (csrc/ops/loss.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/loss.h"

namespace fg::bind {

void bind_loss(py::module_& m) {
  m.def("mse_forward", [](const py::object& pred_obj, const py::object& target_obj) {
    const char* fn = "mse_forward";
    py::array pred = as_array(pred_obj, fn, "pred"), target = as_array(target_obj, fn, "target");
    DType d = float_input(pred, fn, "pred");
    check_dtype(target, d, fn, "target");
    check_contiguous(target, fn, "target");
    check_same_shape(target, pred, fn, "target", "pred");
    if (pred.size() == 0) value_error(cat(fn, ": pred must have at least one element, got shape ", shape_str(pred)));
    return dispatch_float(d, [&](auto tag) -> py::array {
      using T = decltype(tag);
      const T *pp = cptr<T>(pred), *pt = cptr<T>(target);
      const int64_t n = pred.size();
      double s;
      {
        py::gil_scoped_release nogil;
        s = mse_forward<T>(pp, pt, n);
      }
      py::array out = py::array_t<T>(std::vector<py::ssize_t>{});
      *ptr<T>(out) = T(s);
      return out;
    });
  }, py::arg("pred"), py::arg("target"), "loss = mean((pred - target)^2) as a 0-d array (accumulated in double).");
  m.def("mse_backward", [](const py::object& pred_obj, const py::object& target_obj, double dloss) {
    const char* fn = "mse_backward";
    py::array pred = as_array(pred_obj, fn, "pred"), target = as_array(target_obj, fn, "target");
    DType d = float_input(pred, fn, "pred");
    check_dtype(target, d, fn, "target");
    check_contiguous(target, fn, "target");
    check_same_shape(target, pred, fn, "target", "pred");
    if (pred.size() == 0) value_error(cat(fn, ": pred must have at least one element, got shape ", shape_str(pred)));
    return dispatch_float(d, [&](auto tag) -> py::array {
      using T = decltype(tag);
      py::array dpred = py::array_t<T>(shape_of(pred));
      T* pd = ptr<T>(dpred);
      const T *pp = cptr<T>(pred), *pt = cptr<T>(target);
      const int64_t n = pred.size();
      py::gil_scoped_release nogil;
      mse_backward<T>(pd, pp, pt, dloss, n);
      return dpred;
    });
  }, py::arg("pred"), py::arg("target"), py::arg("dloss") = 1.0, "dpred = 2/N * dloss * (pred - target).");
}

}  // namespace fg::bind
