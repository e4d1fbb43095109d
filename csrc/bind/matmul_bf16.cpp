// matmul_bf16: a 2-D product with bfloat16 operands and float32 accumulation (csrc/ops/matmul_bf16.h).
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind/bind.h"
#include "bind/check.h"
#include "core/cpu.h"
#include "ops/matmul_bf16.h"

namespace fg::bind {

namespace {

// an optional float32 operand of the epilogue (bias or residual): null when None
py::array epilogue_arg(const py::object& obj, std::vector<int64_t> shape, bool accumulate, const char* fn,
                       const char* name) {
  if (obj.is_none()) return py::array();
  if (accumulate) value_error(cat(fn, ": ", name, " cannot be combined with accumulate=True"));
  py::array x = as_array(obj, fn, name);
  check_dtype(x, DType::f32, fn, name);
  check_shape(x, shape, fn, name);
  check_contiguous(x, fn, name);
  return x;
}

py::object matmul_bf16_py(const py::object& a_obj, const py::object& b_obj, bool trans_a, bool trans_b,
                          const py::object& out_obj, bool accumulate, const py::object& bias_obj,
                          const py::object& res_obj) {
  const char* fn = "matmul_bf16";
  py::array a = as_array(a_obj, fn, "a"), b = as_array(b_obj, fn, "b");
  check_dtype(a, DType::f32, fn, "a");
  check_dtype(b, DType::f32, fn, "b");
  check_ndim(a, 2, fn, "a");
  check_ndim(b, 2, fn, "b");
  check_contiguous(a, fn, "a");
  check_contiguous(b, fn, "b");
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), Ka = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (Ka != Kb)
    value_error(cat(fn, ": inner dimensions differ: a", trans_a ? "^T" : "", " is (", M, ", ", Ka, ") but b",
                    trans_b ? "^T" : "", " is (", Kb, ", ", N, ")"));
  py::array out;
  if (out_obj.is_none()) {
    if (accumulate) value_error(cat(fn, ": accumulate=True needs out (the array to add into)"));
    out = py::array_t<float>(std::vector<py::ssize_t>{M, N});
  } else {
    out = as_array(out_obj, fn, "out");
    check_dtype(out, DType::f32, fn, "out");
    check_shape(out, {M, N}, fn, "out");
    check_contiguous(out, fn, "out");
    check_writeable(out, fn, "out");
    check_no_alias(out, a, fn, "out", "a");
    check_no_alias(out, b, fn, "out", "b");
  }
  const py::array bias = epilogue_arg(bias_obj, {N}, accumulate, fn, "bias");
  const py::array res = epilogue_arg(res_obj, {M, N}, accumulate, fn, "residual");
  if (!out_obj.is_none() && !res_obj.is_none()) check_no_alias(out, res, fn, "out", "residual");
  float* pc = ptr<float>(out);
  const float *pa = cptr<float>(a), *pb = cptr<float>(b);
  const float* pbias = bias_obj.is_none() ? nullptr : cptr<float>(bias);
  const float* pres = res_obj.is_none() ? nullptr : cptr<float>(res);
  {
    py::gil_scoped_release nogil;
    matmul_bf16(pc, pa, pb, M, N, Ka, trans_a, trans_b, accumulate, pbias, pres);
  }
  return out_obj.is_none() ? py::object(out) : out_obj;
}

}  // namespace

void bind_matmul_bf16(py::module_& m) {
  m.def("matmul_bf16", &matmul_bf16_py, py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("out") = py::none(), py::arg("accumulate") = false,
        py::arg("bias") = py::none(), py::arg("residual") = py::none(),
        "op(a) @ op(b) for 2-D float32 arrays with every operand element rounded to bfloat16 and the "
        "products summed in float32 (mixed precision). With out, writes there (or adds, if accumulate).\n"
        "bias (N,) and residual (M, N), float32, optional (not with accumulate): (op(a) @ op(b) + bias) + "
        "residual, added in float32 as the product is stored (linear's epilogue under autocast).");
  m.def("cpu_has_avx512_bf16", &cpu_has_avx512_bf16, "The CPU (and OS) run AVX512_BF16, and this build has its kernel.");
  m.def("bf16_path", [] { return std::string(bf16_path()); },
        "The kernel matmul_bf16 takes now: 'amx' (AMX-BF16 tiles), 'avx512_bf16' (AVX512_BF16 dot "
        "products), 'amx_simulated' (the AMX kernel over software tiles, for tests) or 'emulated'.");
  m.def("cpu_has_amx_bf16", &cpu_amx_bf16,
        "The CPU has AMX-BF16 and Linux granted this process the tile state (this build's AMX kernel aside).");
  m.def(
      "set_bf16_kernel",
      [](const std::string& name) {
        if (!set_bf16_kernel(name.c_str())) {
          std::string have = "auto";
          for (const auto& k : bf16_kernels_available()) have += ", " + k;
          value_error(cat("set_bf16_kernel: name='", name, "' is not a kernel this CPU and build run; these do: ", have));
        }
      },
      py::arg("name"),
      "Chooses the bf16 matrix-product kernel: 'auto' or one of bf16_kernels_available(). A kernel other "
      "than 'emulated' is taken only while the active ISA path is avx512.");
  m.def("bf16_kernel_setting", [] { return std::string(bf16_kernel_setting()); },
        "'auto' or the kernel set by set_bf16_kernel / FUSEGRAD_BF16_KERNEL.");
  m.def("bf16_kernels_available", &bf16_kernels_available,
        "The bf16 kernels this CPU and build run, slowest-named last: emulated, avx512_bf16, amx_simulated, amx.");
  m.def("bf16_env_note", [] { return std::string(bf16_env_note()); },
        "Non-empty when FUSEGRAD_BF16_KERNEL could not be honoured.");
}

}  // namespace fg::bind
