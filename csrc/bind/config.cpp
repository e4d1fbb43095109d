// Build and run-time configuration: ISA path, kernel threads, OpenMP, machine limits.
#include <string>
#include <vector>

#include <pybind11/stl.h>

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
  // the names of the paths for which pred holds, lowest first
  auto isas_where = [](bool (*pred)(fg::Isa)) {
    std::vector<std::string> r;
    for (int i = 0; i < fg::kNumIsas; ++i)
      if (pred(static_cast<fg::Isa>(i))) r.push_back(fg::isa_name(static_cast<fg::Isa>(i)));
    return r;
  };
  m.def("isas_compiled", [isas_where]() { return isas_where(fg::isa_compiled); },
        "The ISA paths built into this module, lowest first.");
  m.def("isas_supported", [isas_where]() { return isas_where(fg::isa_supported); },
        "The ISA paths this CPU and OS can run (and this module has), lowest first.");
  m.def("best_isa", []() { return std::string(fg::isa_name(fg::best_isa())); });
  m.def("isa_env_note", []() { return fg::isa_env_note(); });
  m.def("cpu_model", &fg::cpu_model);
  m.def(
      "set_isa",
      [](const std::string& name) {
        fg::Isa isa;
        if (!fg::parse_isa(name, &isa))
          value_error(cat("set_isa: isa must be 'portable', 'avx2' or 'avx512', got '", name, "'"));
        if (!fg::isa_supported(isa))
          value_error(cat("set_isa: this ", fg::isa_compiled(isa) ? "CPU (or its OS)" : "build", " has no '", name,
                          "' path; available: ", fg::isa_name(fg::best_isa()), " and below"));
        fg::set_active_isa(isa);
      },
      py::arg("isa"));
  m.def(
      "peak_fma_gflops",
      [](int threads, double seconds, const std::string& isa_name) {
        if (threads < 1) value_error("peak_fma_gflops: threads must be >= 1");
        fg::Isa isa = fg::active_isa();
        if (isa_name != "active") {
          if (!fg::parse_isa(isa_name, &isa) || !fg::isa_supported(isa))
            value_error(cat("peak_fma_gflops: isa must be 'active' or a supported path, got '", isa_name, "'"));
        }
        py::gil_scoped_release nogil;
        return fg::peak_fma_gflops(threads, seconds, isa);
      },
      py::arg("threads"), py::arg("seconds") = 0.3, py::arg("isa") = "active",
      "fp32 FMA GFLOP/s of a register-resident loop on `threads` threads, with the vector width of `isa`.");
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
