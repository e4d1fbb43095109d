// Bindings for the matmul op stem (csrc/ops/matmul.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/matmul.h"

namespace fg::bind {

namespace {

// A C-contiguous input; a 2-D Fortran-ordered array (e.g. x.T) is read as its transpose, which
// the caller folds into the trans flag. Anything else is refused with a clear message.
py::array contiguous_input(py::array a, const char* fn, const char* name, bool& trans, const char* flag) {
  check_aligned(a, fn, name);  // the kernels load T directly: a misaligned T* is UB (UBSan found it)
  if (a.flags() & py::array::c_style) return a;
  if (a.ndim() == 2 && (a.flags() & py::array::f_style)) {
    trans = !trans;
    return a.attr("T").cast<py::array>();
  }
  value_error(cat(fn, ": ", name, " must be C-contiguous (use numpy.ascontiguousarray, or pass the "
                  "untransposed array with ", flag, "=True), got strides that are not"));
}

py::object matmul_py(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b,
                     const py::object& out_obj, bool accumulate) {
  const char* fn = "matmul";
  py::array a = as_array(a_obj, fn, "a"), b = as_array(b_obj, fn, "b");
  DType d = check_float(a, fn, "a");
  check_dtype(b, d, fn, "b");
  check_min_ndim(a, 2, fn, "a");
  check_min_ndim(b, 2, fn, "b");
  a = contiguous_input(a, fn, "a", trans_a, "trans_a");
  b = contiguous_input(b, fn, "b", trans_b, "trans_b");
  const py::ssize_t na = a.ndim(), nb = b.ndim();
  const int64_t M = trans_a ? a.shape(na - 1) : a.shape(na - 2);
  const int64_t Ka = trans_a ? a.shape(na - 2) : a.shape(na - 1);
  const int64_t Kb = trans_b ? b.shape(nb - 1) : b.shape(nb - 2);
  const int64_t N = trans_b ? b.shape(nb - 2) : b.shape(nb - 1);
  if (Ka != Kb)
    value_error(cat(fn, ": inner dimensions differ: a", trans_a ? "^T" : "", " is (..., ", M, ", ", Ka, ") but b",
                    trans_b ? "^T" : "", " is (..., ", Kb, ", ", N, "); a has shape ", shape_str(a),
                    ", b has shape ", shape_str(b)));
  const int64_t K = Ka;
  // Batch dimensions: equal, or one operand is a single matrix broadcast over the other's batch.
  std::vector<int64_t> batch_shape;
  if (na > 2 && nb > 2) {
    bool same = na == nb;
    for (py::ssize_t i = 0; same && i < na - 2; ++i) same = a.shape(i) == b.shape(i);
    if (!same)
      value_error(cat(fn, ": batch dimensions of a ", shape_str(a), " and b ", shape_str(b),
                      " must be equal (or one operand must be 2-D)"));
  }
  const py::array& bigger = na >= nb ? a : b;
  for (py::ssize_t i = 0; i + 2 < bigger.ndim(); ++i) batch_shape.push_back(bigger.shape(i));
  int64_t batch = 1;
  for (auto s : batch_shape) batch *= s;
  const int64_t stride_a = na > 2 ? M * K : 0, stride_b = nb > 2 ? K * N : 0;
  std::vector<int64_t> out_shape = batch_shape;
  out_shape.push_back(M);
  out_shape.push_back(N);

  py::array out;
  if (out_obj.is_none()) {
    if (accumulate) value_error(cat(fn, ": accumulate=True needs out (the array to add into)"));
    out = d == DType::f64 ? py::array(py::array_t<double>(std::vector<py::ssize_t>(out_shape.begin(), out_shape.end())))
                          : py::array(py::array_t<float>(std::vector<py::ssize_t>(out_shape.begin(), out_shape.end())));
  } else {
    out = as_array(out_obj, fn, "out");
    check_dtype(out, d, fn, "out");
    check_shape(out, out_shape, fn, "out");
    check_contiguous(out, fn, "out");
    check_writeable(out, fn, "out");
    check_no_alias(out, a, fn, "out", "a");
    check_no_alias(out, b, fn, "out", "b");
  }
  dispatch_float(d, [&](auto tag) {
    using T = decltype(tag);
    T* pc = ptr<T>(out);
    const T *pa = cptr<T>(a), *pb = cptr<T>(b);
    py::gil_scoped_release nogil;
    matmul<T>(pc, pa, pb, batch, M, N, K, trans_a, trans_b, accumulate, stride_a, stride_b);
  });
  return out_obj.is_none() ? py::object(out) : out_obj;
}

py::array linear_forward_py(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                            const py::object& r_obj) {
  const char* fn = "linear_forward";
  py::array x = as_array(x_obj, fn, "x"), w = as_array(w_obj, fn, "w");
  DType d = float_input(x, fn, "x");
  check_dtype(w, d, fn, "w");
  check_contiguous(w, fn, "w");
  check_min_ndim(x, 1, fn, "x");
  check_ndim(w, 2, fn, "w");
  const int64_t IN = last_dim(x), N = rows_of(x), OUT = w.shape(0);
  if (w.shape(1) != IN)
    value_error(cat(fn, ": w must have shape (out_features, ", IN, ") to match x ", shape_str(x), ", got ", shape_str(w)));
  py::array bias;
  const bool has_b = !b_obj.is_none();
  if (has_b) {
    bias = as_array(b_obj, fn, "b");
    check_dtype(bias, d, fn, "b");
    check_shape(bias, {OUT}, fn, "b");
    check_contiguous(bias, fn, "b");
  }
  std::vector<py::ssize_t> ys = shape_of(x);
  ys.back() = OUT;
  py::array res;
  const bool has_r = !r_obj.is_none();
  if (has_r) {
    res = as_array(r_obj, fn, "residual");
    check_dtype(res, d, fn, "residual");
    check_shape(res, std::vector<int64_t>(ys.begin(), ys.end()), fn, "residual");
    check_contiguous(res, fn, "residual");
  }
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = py::array_t<T>(ys);
    T* py_ = ptr<T>(y);
    const T *px = cptr<T>(x), *pw = cptr<T>(w), *pb = has_b ? cptr<T>(bias) : nullptr;
    const T* pr = has_r ? cptr<T>(res) : nullptr;
    py::gil_scoped_release nogil;
    linear_forward<T>(py_, px, pw, pb, N, IN, OUT, pr);
    return y;
  });
}

py::tuple linear_backward_py(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj) {
  const char* fn = "linear_backward";
  py::array dy = as_array(dy_obj, fn, "dy"), x = as_array(x_obj, fn, "x"), w = as_array(w_obj, fn, "w");
  DType d = float_input(x, fn, "x");
  check_dtype(w, d, fn, "w");
  check_dtype(dy, d, fn, "dy");
  check_contiguous(w, fn, "w");
  check_contiguous(dy, fn, "dy");
  check_min_ndim(x, 1, fn, "x");
  check_ndim(w, 2, fn, "w");
  const int64_t IN = last_dim(x), N = rows_of(x), OUT = w.shape(0);
  if (w.shape(1) != IN)
    value_error(cat(fn, ": w must have shape (out_features, ", IN, ") to match x ", shape_str(x), ", got ", shape_str(w)));
  std::vector<int64_t> dys(x.shape(), x.shape() + x.ndim());
  dys.back() = OUT;
  check_shape(dy, dys, fn, "dy");
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dx = py::array_t<T>(shape_of(x));
    py::array dw = py::array_t<T>(shape_of(w));
    py::array db = py::array_t<T>(std::vector<py::ssize_t>{static_cast<py::ssize_t>(OUT)});
    T *pdx = ptr<T>(dx), *pdw = ptr<T>(dw), *pdb = ptr<T>(db);
    const T *pdy = cptr<T>(dy), *px = cptr<T>(x), *pw = cptr<T>(w);
    {
      py::gil_scoped_release nogil;
      linear_backward<T>(pdx, pdw, pdb, pdy, px, pw, N, IN, OUT);
    }
    return py::make_tuple(dx, dw, db);
  });
}

}  // namespace

void bind_matmul(py::module_& m) {
  m.def("matmul", &matmul_py, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("out") = py::none(), py::arg("accumulate") = false,
        "op(a) @ op(b) where op transposes the last two axes when trans_*; 2-D or batched (leading\n"
        "batch dims, equal or one operand 2-D). With out, writes there (or adds, if accumulate).\n\n"
        ">>> import numpy as np; from fusegrad import ops\n"
        ">>> ops.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).shape\n(2, 4)");
  m.def("linear_forward", &linear_forward_py, py::arg("x"), py::arg("w"), py::arg("b") = py::none(),
        py::arg("residual") = py::none(),
        "y = x @ w.T + b; x: (..., in), w: (out, in) (PyTorch layout), b: (out,) or None.\n"
        "residual (..., out) or None: y = residual + (x @ w.T + b), the bits of adding it afterwards,\n"
        "added where y is stored (a skip connection at no extra pass).");
  m.def("linear_backward", &linear_backward_py, py::arg("dy"), py::arg("x"), py::arg("w"),
        "(dx, dw, db) for y = x @ w.T + b: dx = dy @ w, dw = dy^T @ x (rows flattened), db = dy summed over rows.");
  m.def("_matmul_naive", [](const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
    // The plain triple loop, for tests only: 2-D, C-contiguous, checked like matmul.
    const char* fn = "matmul_naive";
    DType d = float_input(a, fn, "a");
    check_dtype(b, d, fn, "b");
    check_contiguous(b, fn, "b");
    check_ndim(a, 2, fn, "a");
    check_ndim(b, 2, fn, "b");
    const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
    const int64_t N = trans_b ? b.shape(0) : b.shape(1), Kb = trans_b ? b.shape(1) : b.shape(0);
    if (K != Kb) value_error(cat(fn, ": inner dimensions differ"));
    return dispatch_float(d, [&](auto tag) -> py::array {
      using T = decltype(tag);
      py::array c = py::array_t<T>(std::vector<py::ssize_t>{M, N});
      matmul_naive<T>(ptr<T>(c), cptr<T>(a), cptr<T>(b), 1, M, N, K, trans_a, trans_b, false, 0, 0);
      return c;
    });
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false);
}

}  // namespace fg::bind
