// Build and run-time configuration: ISA path, kernel threads, OpenMP, machine limits.
#include "bind/bind.h"
#include "bind/check.h"
#include "core/cpu.h"
#include "core/machine.h"
#include "core/parallel.h"

namespace fg::bind {

void bind_config(py::module_& m) {
  m.def("get_num_threads", &fg::get_num_threads, "Number of threads the kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) value_error(cat("set_num_threads: n must be >= 1, got ", n));
        fg::set_num_threads(n);
      },
      py::arg("n"), "Set the number of threads the kernels use.");
  m.def("have_openmp", &fg::have_openmp);
  m.def("cpu_has_avx2", &fg::cpu_has_avx2_fma);
  m.def("avx2_compiled", &fg::avx2_compiled);
  m.def("get_isa", []() { return std::string(fg::isa_name(fg::active_isa())); });
  m.def(
      "set_isa",
      [](const std::string& name) {
        if (name == "portable") {
          fg::set_active_isa(fg::Isa::portable);
        } else if (name == "avx2") {
          if (!fg::cpu_has_avx2_fma())
            value_error("set_isa: this CPU (or this build) has no AVX2+FMA path; use 'portable'");
          fg::set_active_isa(fg::Isa::avx2);
        } else {
          value_error(cat("set_isa: isa must be 'portable' or 'avx2', got '", name, "'"));
        }
      },
      py::arg("isa"));
  m.def(
      "peak_fma_gflops",
      [](int threads, double seconds) {
        if (threads < 1) value_error("peak_fma_gflops: threads must be >= 1");
        py::gil_scoped_release nogil;
        return fg::peak_fma_gflops(threads, seconds);
      },
      py::arg("threads"), py::arg("seconds") = 0.3);
  m.def(
      "copy_bandwidth_gbs",
      [](int64_t bytes, int threads, int reps) {
        if (threads < 1 || bytes < 1 || reps < 1) value_error("copy_bandwidth_gbs: arguments must be >= 1");
        py::gil_scoped_release nogil;
        return fg::copy_bandwidth_gbs(bytes, threads, reps);
      },
      py::arg("bytes") = int64_t{256} << 20, py::arg("threads") = 1, py::arg("reps") = 5);
#ifdef FUSEGRAD_SANITIZE
  m.attr("sanitized") = true;
#else
  m.attr("sanitized") = false;
#endif
}

}  // namespace fg::bind
