// Bindings for the attention op stem (csrc/ops/attention.h): argument checks, then the kernel with the GIL released.
#include <cmath>

#include "bind/bind.h"
#include "bind/check.h"
#include "ops/attention.h"

namespace fg::bind {

namespace {

constexpr int64_t kMaxD = 256;

struct Dims { int64_t B, H, Hkv, T, S, D; };

// q: (B, H, T, D), k and v: (B, Hkv, S, D), H % Hkv == 0, 1 <= D <= 256; all contiguous, one dtype.
Dims check_qkv(const py::array& q, const py::array& k, const py::array& v, DType d, const char* fn) {
  check_dtype(k, d, fn, "k");
  check_dtype(v, d, fn, "v");
  check_contiguous(k, fn, "k");
  check_contiguous(v, fn, "v");
  check_ndim(q, 4, fn, "q");
  check_ndim(k, 4, fn, "k");
  check_ndim(v, 4, fn, "v");
  Dims s{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3)};
  if (k.shape(0) != s.B || k.shape(3) != s.D)
    value_error(cat(fn, ": k must have shape (B, Hkv, S, D) with B=", s.B, " and D=", s.D,
                    " from q ", shape_str(q), ", got ", shape_str(k)));
  check_same_shape(v, k, fn, "v", "k");
  if (s.D < 1 || s.D > kMaxD)
    value_error(cat(fn, ": head dimension D must be between 1 and ", kMaxD, ", got ", s.D));
  if (s.H < 1 || s.Hkv < 1 || s.H % s.Hkv != 0)
    value_error(cat(fn, ": the number of heads of q (", s.H, ") must be a positive multiple of the number of heads of k and v (", s.Hkv, ")"));
  return s;
}

// bf16 (mixed precision) takes float32 operands only.
void check_bf16(bool bf16, DType d, const char* fn, const char* name) {
  if (bf16 && d != DType::f32)
    type_error(cat(fn, ": bf16=True needs float32 ", name, " (bfloat16 operands, float32 sums), got float64"));
}

double get_scale(const py::object& scale, int64_t D, const char* fn) {
  if (scale.is_none()) return 1.0 / std::sqrt(static_cast<double>(D));
  double s;
  try { s = scale.cast<double>(); } catch (const py::cast_error&) {
    type_error(cat(fn, ": scale must be a float or None"));
  }
  if (!std::isfinite(s)) value_error(cat(fn, ": scale must be finite, got ", s));
  return s;
}

py::tuple forward(const py::object& q_obj, const py::object& k_obj, const py::object& v_obj,
                  bool causal, const py::object& scale_obj, bool bf16) {
  const char* fn = "attention_forward";
  py::array q = as_array(q_obj, fn, "q"), k = as_array(k_obj, fn, "k"), v = as_array(v_obj, fn, "v");
  DType d = float_input(q, fn, "q");
  check_bf16(bf16, d, fn, "q");
  Dims s = check_qkv(q, k, v, d, fn);
  const double scale = get_scale(scale_obj, s.D, fn);
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array o = py::array_t<T>(shape_of(q));
    py::array lse = py::array_t<T>(std::vector<py::ssize_t>{s.B, s.H, s.T});
    T *po = ptr<T>(o), *pl = ptr<T>(lse);
    const T *pq = cptr<T>(q), *pk = cptr<T>(k), *pv = cptr<T>(v);
    {
      py::gil_scoped_release nogil;
      attention_forward<T>(po, pl, pq, pk, pv, s.B, s.H, s.Hkv, s.T, s.S, s.D, causal, static_cast<T>(scale), bf16);
    }
    return py::make_tuple(o, lse);
  });
}

py::tuple backward(const py::object& do_obj, const py::object& q_obj, const py::object& k_obj,
                   const py::object& v_obj, const py::object& o_obj, const py::object& lse_obj,
                   bool causal, const py::object& scale_obj, bool bf16) {
  const char* fn = "attention_backward";
  py::array dO = as_array(do_obj, fn, "do"), q = as_array(q_obj, fn, "q"), k = as_array(k_obj, fn, "k"),
            v = as_array(v_obj, fn, "v"), o = as_array(o_obj, fn, "o"), lse = as_array(lse_obj, fn, "lse");
  DType d = float_input(q, fn, "q");
  check_bf16(bf16, d, fn, "q");
  Dims s = check_qkv(q, k, v, d, fn);
  check_dtype(dO, d, fn, "do");
  check_dtype(o, d, fn, "o");
  check_dtype(lse, d, fn, "lse");
  check_contiguous(dO, fn, "do");
  check_contiguous(o, fn, "o");
  check_contiguous(lse, fn, "lse");
  check_same_shape(dO, q, fn, "do", "q");
  check_same_shape(o, q, fn, "o", "q");
  check_shape(lse, {s.B, s.H, s.T}, fn, "lse");
  const double scale = get_scale(scale_obj, s.D, fn);
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dq = py::array_t<T>(shape_of(q)), dk = py::array_t<T>(shape_of(k)), dv = py::array_t<T>(shape_of(v));
    T *pdq = ptr<T>(dq), *pdk = ptr<T>(dk), *pdv = ptr<T>(dv);
    const T *pdo = cptr<T>(dO), *pq = cptr<T>(q), *pk = cptr<T>(k), *pv = cptr<T>(v),
            *po = cptr<T>(o), *pl = cptr<T>(lse);
    {
      py::gil_scoped_release nogil;
      attention_backward<T>(pdq, pdk, pdv, pdo, pq, pk, pv, po, pl, s.B, s.H, s.Hkv, s.T, s.S, s.D,
                            causal, static_cast<T>(scale), bf16);
    }
    return py::make_tuple(dq, dk, dv);
  });
}

// n_head / n_kv_head of the packed entry points, and the head size from qkv's width.
struct Packed { int64_t B, T, H, Hkv, D; };

Packed check_packed(const py::array& qkv, int64_t H, const py::object& hkv_obj, const char* fn) {
  check_ndim(qkv, 3, fn, "qkv");
  check_contiguous(qkv, fn, "qkv");
  if (H < 1) value_error(cat(fn, ": n_head must be >= 1, got ", H));
  int64_t Hkv = H;
  if (!hkv_obj.is_none()) {
    try { Hkv = hkv_obj.cast<int64_t>(); } catch (const py::cast_error&) {
      type_error(cat(fn, ": n_kv_head must be an int or None"));
    }
  }
  if (Hkv < 1 || H % Hkv != 0)
    value_error(cat(fn, ": n_head (", H, ") must be a positive multiple of n_kv_head (", Hkv, ")"));
  const int64_t W = qkv.shape(2), nh = H + 2 * Hkv;
  if (W % nh != 0 || W / nh < 1 || W / nh > kMaxD)
    value_error(cat(fn, ": qkv must have shape (B, T, (n_head + 2 n_kv_head) D) with 1 <= D <= ", kMaxD,
                    "; got ", shape_str(qkv), " for n_head=", H, ", n_kv_head=", Hkv));
  return {qkv.shape(0), qkv.shape(1), H, Hkv, W / nh};
}

py::tuple qkv_forward(const py::object& qkv_obj, int64_t H, const py::object& hkv_obj, bool causal,
                      const py::object& scale_obj, bool bf16) {
  const char* fn = "attention_qkv_forward";
  py::array qkv = as_array(qkv_obj, fn, "qkv");
  DType d = float_input(qkv, fn, "qkv");
  check_bf16(bf16, d, fn, "qkv");
  const Packed s = check_packed(qkv, H, hkv_obj, fn);
  const double scale = get_scale(scale_obj, s.D, fn);
  return dispatch_float(d, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array o = py::array_t<T>(std::vector<py::ssize_t>{s.B, s.T, s.H * s.D});
    py::array lse = py::array_t<T>(std::vector<py::ssize_t>{s.B, s.H, s.T});
    T *po = ptr<T>(o), *pl = ptr<T>(lse);
    const T* pqkv = cptr<T>(qkv);
    {
      py::gil_scoped_release nogil;
      attention_qkv_forward<T>(po, pl, pqkv, s.B, s.H, s.Hkv, s.T, s.D, causal, static_cast<T>(scale), bf16);
    }
    return py::make_tuple(o, lse);
  });
}

py::array qkv_backward(const py::object& do_obj, const py::object& qkv_obj, const py::object& o_obj,
                       const py::object& lse_obj, int64_t H, const py::object& hkv_obj, bool causal,
                       const py::object& scale_obj, bool bf16) {
  const char* fn = "attention_qkv_backward";
  py::array qkv = as_array(qkv_obj, fn, "qkv");
  DType d = float_input(qkv, fn, "qkv");
  check_bf16(bf16, d, fn, "qkv");
  const Packed s = check_packed(qkv, H, hkv_obj, fn);
  py::array dO = as_array(do_obj, fn, "do"), o = as_array(o_obj, fn, "o"), lse = as_array(lse_obj, fn, "lse");
  for (auto [a, name] : {std::pair<py::array*, const char*>{&dO, "do"}, {&o, "o"}, {&lse, "lse"}}) {
    check_dtype(*a, d, fn, name);
    check_contiguous(*a, fn, name);
  }
  check_shape(dO, {s.B, s.T, s.H * s.D}, fn, "do");
  check_shape(o, {s.B, s.T, s.H * s.D}, fn, "o");
  check_shape(lse, {s.B, s.H, s.T}, fn, "lse");
  const double scale = get_scale(scale_obj, s.D, fn);
  return dispatch_float(d, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dqkv = py::array_t<T>(shape_of(qkv));
    T* pd = ptr<T>(dqkv);
    const T *pdo = cptr<T>(dO), *pqkv = cptr<T>(qkv), *po = cptr<T>(o), *pl = cptr<T>(lse);
    {
      py::gil_scoped_release nogil;
      attention_qkv_backward<T>(pd, pdo, pqkv, po, pl, s.B, s.H, s.Hkv, s.T, s.D, causal, static_cast<T>(scale),
                                bf16);
    }
    return dqkv;
  });
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def("attention_qkv_forward", &qkv_forward, py::arg("qkv"), py::arg("n_head"), py::arg("n_kv_head") = py::none(),
        py::arg("causal") = false, py::arg("scale") = py::none(), py::arg("bf16") = false,
        "(o, lse) = attention_forward on the packed projection of a transformer block, without\n"
        "head split/merge copies: qkv: (B, T, (H + 2 Hkv) D), each row [q heads | k heads | v heads]\n"
        "(H = n_head, Hkv = n_kv_head, default H); o: (B, T, H D) with heads side by side, lse: (B, H, T).");
  m.def("attention_qkv_backward", &qkv_backward, py::arg("do"), py::arg("qkv"), py::arg("o"), py::arg("lse"),
        py::arg("n_head"), py::arg("n_kv_head") = py::none(), py::arg("causal") = false,
        py::arg("scale") = py::none(), py::arg("bf16") = false,
        "dqkv (B, T, (H + 2 Hkv) D) for attention_qkv_forward (same packing as qkv).");
  m.def("attention_forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("causal") = false, py::arg("scale") = py::none(), py::arg("bf16") = false,
        "(o, lse) = softmax(scale * q k^T + mask) v and its per-row log-sum-exp.\n"
        "q: (B, H, T, D), k, v: (B, Hkv, S, D), H % Hkv == 0, 1 <= D <= 256. causal aligns the\n"
        "mask bottom-right (query i sees key j iff j <= i + S - T); rows with no key give o = 0,\n"
        "lse = -inf. scale defaults to 1/sqrt(D). bf16=True (float32 only; mixed precision, as\n"
        "torch.autocast): the products take bfloat16 operands (q, k, v and the probabilities rounded to\n"
        "nearest even) with float32 sums; softmax statistics, lse and o stay float32.");
  m.def("attention_backward", &backward, py::arg("do"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("o"), py::arg("lse"), py::arg("causal") = false, py::arg("scale") = py::none(),
        py::arg("bf16") = false,
        "(dq, dk, dv) for attention_forward, recomputing probabilities tile by tile from lse.\n"
        "dk/dv are bitwise identical for any thread count. bf16=True: do, q, k, v, P and dS enter the\n"
        "products as bfloat16 (float32 sums), as in attention_forward(bf16=True).");
  m.def("_attention_naive_forward", [](const py::array_t<double, 0>& q, const py::array_t<double, 0>& k,
                                       const py::array_t<double, 0>& v, bool causal, double scale) {
    // Test hook: the plain reference kernel (float64 only, no checks beyond pybind's).
    py::array qa = q, ka = k, va = v;
    Dims s = check_qkv(qa, ka, va, DType::f64, "_attention_naive_forward");
    py::array o = py::array_t<double>(shape_of(qa));
    py::array lse = py::array_t<double>(std::vector<py::ssize_t>{s.B, s.H, s.T});
    attention_naive_forward<double>(ptr<double>(o), ptr<double>(lse), cptr<double>(qa), cptr<double>(ka),
                                    cptr<double>(va), s.B, s.H, s.Hkv, s.T, s.S, s.D, causal, scale);
    return py::make_tuple(o, lse);
  });
}

}  // namespace fg::bind
