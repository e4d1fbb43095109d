// fusegrad._cuda: the CUDA kernels' launchers for python/fusegrad/cuda.py, which checks every
// argument (devices, dtypes, shapes, contiguity), allocates outputs with CuPy on the caller's
// current stream and passes raw device pointers, sizes and the stream here. Also: device queries,
// and the kernels' per-element math run on the host (_host_math) so the tests check it without a GPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "cuda/kernels.h"
#include "cuda/math.h"

namespace py = pybind11;
using fg::cuda::Heads;

namespace {

template <typename T>
T* P(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t S(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void need(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

Heads heads(const std::tuple<int64_t, int64_t, int64_t>& t) { return {std::get<0>(t), std::get<1>(t), std::get<2>(t)}; }

fg::cuda::Act act(const std::string& name) {
  using fg::cuda::Act;
  if (name == "relu") return Act::relu;
  if (name == "gelu_tanh") return Act::gelu_tanh;
  if (name == "gelu_erf") return Act::gelu_erf;
  if (name == "sigmoid") return Act::sigmoid;
  if (name == "tanh") return Act::tanh;
  throw py::value_error("unknown activation '" + name + "'");
}

// The device count, or 0 when there is no driver or no device (CUDA's reason in `why`).
std::tuple<int, std::string> device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: it is not sticky
    return {0, cudaGetErrorString(e)};
  }
  return {n, ""};
}

py::array_t<float> host_math(const py::array_t<float, py::array::c_style | py::array::forcecast>& x,
                             const std::string& fn) {
  namespace cm = fg::cuda_math;
  py::array_t<float> y(x.request().shape);
  const float* px = x.data();
  float* py_ = y.mutable_data();
  const int64_t n = x.size();
  float (*f)(float) = nullptr;
  if (fn == "gelu_tanh") f = cm::gelu_tanh;
  else if (fn == "gelu_tanh_grad") f = cm::gelu_tanh_grad;
  else if (fn == "gelu_erf") f = cm::gelu_erf;
  else if (fn == "gelu_erf_grad") f = cm::gelu_erf_grad;
  else if (fn == "sigmoid") f = cm::sigmoid;
  else if (fn == "relu") f = cm::relu;
  else if (fn == "pow2_scale") f = cm::pow2_scale;
  else throw py::value_error("_host_math: unknown function '" + fn + "'");
  for (int64_t i = 0; i < n; ++i) py_[i] = f(px[i]);
  return y;
}

// One Adam/AdamW step of math.h on host arrays (updated in place), for the tests.
void host_adam(py::array_t<float> p, py::array_t<float> m, py::array_t<float> v, const py::array_t<float>& g,
               int64_t step, double lr, double beta1, double beta2, double eps, double wd, bool decoupled) {
  need(p.size() == m.size() && p.size() == v.size() && p.size() == g.size(), "_host_adam: sizes differ");
  const auto c = fg::cuda_math::adam_consts(step, lr, beta1, beta2, eps, wd, decoupled);
  float *pp = p.mutable_data(), *pm = m.mutable_data(), *pv = v.mutable_data();
  const float* pg = g.data();
  for (int64_t i = 0; i < p.size(); ++i) fg::cuda_math::adam_update(pp[i], pm[i], pv[i], pg[i], c);
}

fg::cuda::Dt dtype_of(const std::string& name, const char* what) {
  using fg::cuda::Dt;
  if (name == "float32") return Dt::f32;
  if (name == "float16") return Dt::f16;
  if (name == "bfloat16") return Dt::bf16;
  throw py::type_error(std::string("lt_matmul: ") + what + " must be 'float32', 'float16' or 'bfloat16', got '" + name +
                       "'");
}

fg::cuda::Epi epilogue_of(const std::string& name) {
  using fg::cuda::Epi;
  if (name == "none") return Epi::none;
  if (name == "bias") return Epi::bias;
  if (name == "gelu_bias") return Epi::gelu_bias;
  if (name == "dgelu_bgrad") return Epi::dgelu_bgrad;
  if (name == "bgradb") return Epi::bgradb;
  throw py::value_error("lt_matmul: epilogue must be one of none, bias, gelu_bias, dgelu_bgrad, bgradb, got '" + name +
                        "'");
}

// A Gemm from the binding's arguments, every size and pointer the epilogue needs checked here,
// before anything reaches the device.
fg::cuda::Gemm gemm_of(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb,
                       int64_t sd, const std::string& ab, const std::string& cd, const std::string& epi, bool accumulate,
                       bool tf32) {
  using fg::cuda::Epi;
  fg::cuda::Gemm g;
  g.ta = ta, g.tb = tb, g.M = M, g.N = N, g.K = K, g.batch = batch, g.sa = sa, g.sb = sb, g.sd = sd;
  g.ab = dtype_of(ab, "ab"), g.cd = dtype_of(cd, "cd"), g.epi = epilogue_of(epi), g.accumulate = accumulate;
  g.tf32 = tf32;
  need(M >= 0 && N >= 0 && K >= 0, "lt_matmul: M, N, K must be >= 0, got " + std::to_string(M) + ", " +
                                       std::to_string(N) + ", " + std::to_string(K));
  const int64_t lim = int64_t(1) << 31;
  need(M < lim && N < lim && K < lim && batch < lim, "lt_matmul: M, N, K and batch must each be below 2^31");
  need(batch >= 1, "lt_matmul: batch must be >= 1, got " + std::to_string(batch));
  need(sa >= 0 && sb >= 0 && sd >= 0, "lt_matmul: batch strides must be >= 0");
  need(batch == 1 || sd >= M * N, "lt_matmul: the output's batch stride must be at least M*N");
  need(g.ab != fg::cuda::Dt::f32 || g.cd == fg::cuda::Dt::f32, "lt_matmul: float32 operands need a float32 output");
  need(g.cd == fg::cuda::Dt::f32 || g.cd == g.ab, "lt_matmul: the output type must be float32 or the operands' type");
  need(g.epi == Epi::none || batch == 1, "lt_matmul: epilogue '" + epi + "' needs batch 1");
  need(g.epi == Epi::none || g.epi == Epi::bias || !accumulate,
       "lt_matmul: epilogue '" + epi + "' cannot accumulate into the output");
  return g;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  namespace fc = fg::cuda;
  m.doc() = "fusegrad's CUDA kernels (launchers; call them through fusegrad.cuda / fusegrad.ops)";
  m.def("device_count", &device_count, "(count, reason): 0 and CUDA's reason where no GPU can be used");
  m.def("runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("synchronize", [] {
    py::gil_scoped_release nogil;
    const cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(e));
  });
  m.attr("max_head_dim") = fc::kAttnMaxD;
  m.def("_host_math", &host_math, py::arg("x"), py::arg("fn"));
  m.def("_host_adam", &host_adam);

  m.def("act_forward", [](const std::string& a, uintptr_t y, uintptr_t x, int64_t n, uintptr_t s) {
    fc::act_forward(act(a), P<float>(y), P<const float>(x), n, S(s));
  });
  m.def("act_backward", [](const std::string& a, uintptr_t dx, uintptr_t dy, uintptr_t x, int64_t n, uintptr_t s) {
    fc::act_backward(act(a), P<float>(dx), P<const float>(dy), P<const float>(x), n, S(s));
  });
  m.def("layernorm_forward", [](uintptr_t y, uintptr_t mean, uintptr_t rstd, uintptr_t x, uintptr_t w, uintptr_t b,
                                int64_t N, int64_t C, double eps, uintptr_t s) {
    fc::layernorm_forward(P<float>(y), P<float>(mean), P<float>(rstd), P<const float>(x), P<const float>(w),
                          P<const float>(b), N, C, float(eps), S(s));
  });
  m.def("layernorm_workspace_floats", &fc::layernorm_workspace_floats);
  m.def("layernorm_backward", [](uintptr_t dx, uintptr_t dw, uintptr_t db, uintptr_t work, uintptr_t dy, uintptr_t x,
                                 uintptr_t w, uintptr_t mean, uintptr_t rstd, int64_t N, int64_t C, uintptr_t s) {
    fc::layernorm_backward(P<float>(dx), P<float>(dw), P<float>(db), P<float>(work), P<const float>(dy),
                           P<const float>(x), P<const float>(w), P<const float>(mean), P<const float>(rstd), N, C, S(s));
  });
  m.def("softmax_forward", [](uintptr_t y, uintptr_t x, int64_t N, int64_t V, bool log, uintptr_t s) {
    fc::softmax_forward(P<float>(y), P<const float>(x), N, V, log, S(s));
  });
  m.def("softmax_backward", [](uintptr_t dx, uintptr_t dy, uintptr_t y, int64_t N, int64_t V, bool log, uintptr_t s) {
    fc::softmax_backward(P<float>(dx), P<const float>(dy), P<const float>(y), N, V, log, S(s));
  });
  m.def("cross_entropy_forward", [](uintptr_t loss, uintptr_t lse, uintptr_t work, uintptr_t t, bool t64,
                                    int64_t ignore, uintptr_t logits, int64_t N, int64_t V, uintptr_t s) {
    fc::cross_entropy_forward(P<float>(loss), P<float>(lse), P<float>(work), P<const void>(t), t64, ignore,
                              P<const float>(logits), N, V, S(s));
  });
  m.def("cross_entropy_backward", [](uintptr_t d, uintptr_t logits, uintptr_t t, bool t64, uintptr_t lse, double dloss,
                                     int64_t count, int64_t ignore, int64_t N, int64_t V, uintptr_t s) {
    fc::cross_entropy_backward(P<float>(d), P<const float>(logits), P<const void>(t), t64, P<const float>(lse),
                               float(dloss), count, ignore, N, V, S(s));
  });
  m.def("embedding_forward", [](uintptr_t out, uintptr_t ids, bool i64, uintptr_t table, int64_t N, int64_t C,
                                uintptr_t s) {
    fc::embedding_forward(P<float>(out), P<const void>(ids), i64, P<const float>(table), N, C, S(s));
  });
  m.def("embedding_backward", [](uintptr_t dtable, uintptr_t dout, uintptr_t ids, bool i64, int64_t N, int64_t C,
                                 uintptr_t s) {
    fc::embedding_backward(P<float>(dtable), P<const float>(dout), P<const void>(ids), i64, N, C, S(s));
  });
  m.def("adam_step", [](uintptr_t p, uintptr_t mm, uintptr_t v, uintptr_t g, int64_t N, int64_t step, double lr,
                        double b1, double b2, double eps, double wd, bool decoupled, uintptr_t s) {
    need(step >= 1, "adam_step: step must be >= 1");
    fc::adam_step(P<float>(p), P<float>(mm), P<float>(v), P<const float>(g), N, step, lr, b1, b2, eps, wd, decoupled,
                  S(s));
  });
  m.def("sgd_step", [](uintptr_t p, uintptr_t mm, uintptr_t g, int64_t N, double lr, double mom, double wd,
                       bool nesterov, double damp, bool first, uintptr_t s) {
    fc::sgd_step(P<float>(p), P<float>(mm), P<const float>(g), N, lr, mom, wd, nesterov, damp, first, S(s));
  });
  m.def("sum_squares_workspace", &fc::sum_squares_workspace);
  m.def("sum_squares", [](uintptr_t out, uintptr_t work, uintptr_t x, int64_t N, uintptr_t s) {
    fc::sum_squares(P<double>(out), P<double>(work), P<const float>(x), N, S(s));
  });
  using H3 = std::tuple<int64_t, int64_t, int64_t>;
  // the float32 kernels (attention.cu) and the bf16 tensor-core ones (attention_tc.cu) share arguments
  auto attn_forward = [](auto kernel, std::string name) {
    return [kernel, name](uintptr_t o, H3 Lo, uintptr_t lse, uintptr_t q, H3 Lq, uintptr_t k, H3 Lk, uintptr_t v,
                          H3 Lv, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t Sk, int64_t D, bool causal,
                          double scale, uintptr_t s) {
      need(H > 0 && Hkv > 0 && H % Hkv == 0 && D >= 1 && D <= fc::kAttnMaxD, name + ": bad head sizes");
      kernel(P<float>(o), heads(Lo), P<float>(lse), P<const float>(q), heads(Lq), P<const float>(k), heads(Lk),
             P<const float>(v), heads(Lv), B, H, Hkv, T, Sk, D, causal, float(scale), S(s));
    };
  };
  auto attn_backward = [](auto kernel, std::string name) {
    return [kernel, name](uintptr_t dq, H3 Ldq, uintptr_t dk, H3 Ldk, uintptr_t dv, H3 Ldv, uintptr_t work,
                          uintptr_t dO, H3 Ldo, uintptr_t q, H3 Lq, uintptr_t k, H3 Lk, uintptr_t v, H3 Lv,
                          uintptr_t o, H3 Lo, uintptr_t lse, int64_t B, int64_t H, int64_t Hkv, int64_t T,
                          int64_t Sk, int64_t D, bool causal, double scale, uintptr_t s) {
      need(H > 0 && Hkv > 0 && H % Hkv == 0 && D >= 1 && D <= fc::kAttnMaxD, name + ": bad head sizes");
      kernel(P<float>(dq), heads(Ldq), P<float>(dk), heads(Ldk), P<float>(dv), heads(Ldv), P<float>(work),
             P<const float>(dO), heads(Ldo), P<const float>(q), heads(Lq), P<const float>(k), heads(Lk),
             P<const float>(v), heads(Lv), P<const float>(o), heads(Lo), P<const float>(lse), B, H, Hkv, T, Sk, D,
             causal, float(scale), S(s));
    };
  };
  m.def("attention_forward", attn_forward(&fc::attention_forward, "attention_forward"));
  m.def("attention_backward", attn_backward(&fc::attention_backward, "attention_backward"));
  // the tensor-core kernels, once per 16-bit type (fp16: `work` holds B*H*T + 1 floats)
  for (const auto t : {fc::TcType::bf16, fc::TcType::fp16}) {
    const std::string sfx = t == fc::TcType::fp16 ? "_fp16" : "";
    const std::string what = t == fc::TcType::fp16 ? " (fp16)" : " (bf16)";
    m.def(("attention_forward_tc" + sfx).c_str(),
          attn_forward([t](auto... a) { fc::attention_forward_tc(a..., t); }, "attention_forward" + what));
    m.def(("attention_backward_tc" + sfx).c_str(),
          attn_backward([t](auto... a) { fc::attention_backward_tc(a..., t); }, "attention_backward" + what));
  }
  m.def("attention_tc_supported", &fc::attention_tc_supported,
        "The bf16 and fp16 tensor-core attention kernels take this head size.");
  m.def("lt_load", &fc::lt_load, py::arg("candidates"),
        "dlopen the first cuBLASLt library in candidates that has the entry points; returns its path\n"
        "(RuntimeError listing every path tried and why, when none does). Once loaded, stays loaded.");
  m.def("lt_loaded", &fc::lt_loaded);
  m.def("lt_path", &fc::lt_path);
  m.def("lt_version", &fc::lt_version);
  m.def("lt_plan_count", &fc::lt_plan_count);
  m.def("lt_clear_plans", &fc::lt_clear_plans);
  m.def("_lt_key", [](bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb,
                      int64_t sd, const std::string& ab, const std::string& cd, const std::string& epi, bool tf32,
                      std::tuple<uint32_t, uint32_t, uint32_t> al, int device) {
    const auto g = gemm_of(ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, false, tf32);
    const uint32_t a[3] = {std::get<0>(al), std::get<1>(al), std::get<2>(al)};
    return fc::lt_key(g, a, device);
  });
  m.def("_lt_problem", [](bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb,
                          int64_t sd, const std::string& ab, const std::string& cd, const std::string& epi, bool tf32) {
    const auto q = fc::lt_problem(gemm_of(ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, false, tf32));
    auto lay = [](const fc::LtLayout& l) {
      py::dict d;
      d["dtype"] = int(l.dt), d["rows"] = l.rows, d["cols"] = l.cols, d["ld"] = l.ld, d["batch"] = l.batch;
      d["stride"] = l.stride;
      return d;
    };
    py::dict d;
    d["opa"] = q.opa, d["opb"] = q.opb, d["compute"] = q.compute, d["m"] = q.m, d["n"] = q.n, d["k"] = q.k;
    d["a"] = lay(q.a), d["b"] = lay(q.b), d["d"] = lay(q.d), d["epilogue"] = q.epilogue, d["aux_ld"] = q.aux_ld;
    return d;
  }, "what a product asks of cuBLASLt (for the tests: its column-major problem)");
  m.def("lt_matmul", [](bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t batch, int64_t sa, int64_t sb,
                        int64_t sd, const std::string& ab, const std::string& cd, const std::string& epi,
                        bool accumulate, bool tf32, uintptr_t d, uintptr_t a, uintptr_t b, uintptr_t bias,
                        uintptr_t aux, uintptr_t dbias, uintptr_t s) {
    const auto g = gemm_of(ta, tb, M, N, K, batch, sa, sb, sd, ab, cd, epi, accumulate, tf32);
    using fg::cuda::Epi;
    need(d && (a || K == 0) && (b || K == 0), "lt_matmul: d, a and b must be device pointers, got null");
    need(!(g.epi == Epi::bias || g.epi == Epi::gelu_bias) || bias, "lt_matmul: epilogue '" + epi + "' needs bias");
    need(!(g.epi == Epi::gelu_bias || g.epi == Epi::dgelu_bgrad) || aux, "lt_matmul: epilogue '" + epi + "' needs aux");
    need(!(g.epi == Epi::bgradb || g.epi == Epi::dgelu_bgrad) || dbias, "lt_matmul: epilogue '" + epi + "' needs dbias");
    if (!fc::lt_loaded()) throw std::runtime_error("lt_matmul: cuBLASLt is not loaded (fusegrad.cuda.load_cublaslt())");
    return fc::lt_matmul(g, P<void>(d), P<const void>(a), P<const void>(b), P<const void>(bias), P<void>(aux),
                         P<void>(dbias), S(s));
  });
  m.def("to_bf16", [](uintptr_t y, uintptr_t x, int64_t n, uintptr_t s) {
    fc::to_bf16(P<uint16_t>(y), P<const float>(x), n, S(s));
  });
  m.def("bf16_to_f32", [](uintptr_t y, uintptr_t x, int64_t n, uintptr_t s) {
    fc::bf16_to_f32(P<float>(y), P<const uint16_t>(x), n, S(s));
  });
  m.def("_host_bf16", [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
    py::array_t<uint16_t> y(x.request().shape);
    const float* px = x.data();
    uint16_t* py_ = y.mutable_data();
    for (int64_t i = 0; i < x.size(); ++i) py_[i] = fg::cuda_math::bf16_bits(px[i]);
    return y;
  }, "math.h's float32 -> bfloat16 rounding on the host (for the tests)");
  m.def("add_bias_residual", [](uintptr_t y, uintptr_t b, uintptr_t r, int64_t N, int64_t O, uintptr_t s) {
    fc::add_bias_residual(P<float>(y), P<const float>(b), P<const float>(r), N, O, S(s));
  });
  m.def("colsum_workspace_floats", &fc::colsum_workspace_floats);
  m.def("column_sums", [](uintptr_t out, uintptr_t work, uintptr_t x, int64_t N, int64_t O, uintptr_t s) {
    fc::column_sums(P<float>(out), P<float>(work), P<const float>(x), N, O, S(s));
  });
}
