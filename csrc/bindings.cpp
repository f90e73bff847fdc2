// The pybind11 module pvdm_fast._C. Compiled by g++ with no CUDA or torch headers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "launchers.h"

namespace py = pybind11;
using pvdm::GnSiluArgs;

static py::dict build_info_dict() {
  // Never raises: every field is filled even without CUDA or a driver.
  const pvdm::BuildInfo info = pvdm::build_info();
  py::dict d;
  d["cuda"] = info.cuda;
  d["cuda_archs"] = info.cuda_archs;
  d["cuda_arch_flags"] = info.cuda_arch_flags;
  d["cuda_runtime_version"] = info.cuda ? py::object(py::int_(info.cuda_runtime_version)) : py::object(py::none());
  d["driver_version"] = info.cuda ? py::object(py::int_(info.driver_version)) : py::object(py::none());
  d["device_count"] = info.device_count;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pvdm_fast CUDA launchers (torch-free: pointers, sizes, dtype codes and streams as integers)";
  m.def("build_info", &build_info_dict, "What was compiled, plus the driver and device count seen now.");

  m.def(
      "gn_silu_fwd",
      [](uintptr_t x, uintptr_t y, uintptr_t weight, uintptr_t bias, uintptr_t scale, uintptr_t shift,
         uintptr_t mean, uintptr_t rstd, int64_t batch, int64_t channels, int64_t length, int64_t groups,
         std::vector<int64_t> segments, double eps, bool apply_silu, int dtype, uintptr_t stream) {
        GnSiluArgs a{};
        a.x = x, a.y = y, a.weight = weight, a.bias = bias, a.scale = scale, a.shift = shift;
        a.mean = mean, a.rstd = rstd;
        a.batch = batch, a.channels = channels, a.length = length, a.groups = groups;
        a.segments = std::move(segments), a.eps = eps, a.apply_silu = apply_silu, a.dtype = dtype;
        a.stream = stream;
        pvdm::gn_silu_fwd(a);
      },
      py::arg("x"), py::arg("y"), py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"),
      py::arg("mean"), py::arg("rstd"), py::arg("batch"), py::arg("channels"), py::arg("length"),
      py::arg("groups"), py::arg("segments"), py::arg("eps"), py::arg("apply_silu"), py::arg("dtype"),
      py::arg("stream"),
      "GroupNorm+FiLM+SiLU forward on (B, C, L) with per-segment statistics; writes y, mean, rstd.");

  m.def(
      "gn_silu_bwd",
      [](uintptr_t dy, uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t scale, uintptr_t shift,
         uintptr_t mean, uintptr_t rstd, uintptr_t dx, uintptr_t dweight_part, uintptr_t dbias_part,
         uintptr_t dscale_part, uintptr_t dshift_part, int64_t batch, int64_t channels, int64_t length,
         int64_t groups, std::vector<int64_t> segments, bool apply_silu, int dtype, uintptr_t stream) {
        GnSiluArgs a{};
        a.dy = dy, a.x = x, a.weight = weight, a.bias = bias, a.scale = scale, a.shift = shift;
        a.mean = mean, a.rstd = rstd, a.dx = dx;
        a.dweight_part = dweight_part, a.dbias_part = dbias_part;
        a.dscale_part = dscale_part, a.dshift_part = dshift_part;
        a.batch = batch, a.channels = channels, a.length = length, a.groups = groups;
        a.segments = std::move(segments), a.eps = 0.0, a.apply_silu = apply_silu, a.dtype = dtype;
        a.stream = stream;
        pvdm::gn_silu_bwd(a);
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"),
      py::arg("mean"), py::arg("rstd"), py::arg("dx"), py::arg("dweight_part"), py::arg("dbias_part"),
      py::arg("dscale_part"), py::arg("dshift_part"), py::arg("batch"), py::arg("channels"), py::arg("length"),
      py::arg("groups"), py::arg("segments"), py::arg("apply_silu"), py::arg("dtype"), py::arg("stream"),
      "GroupNorm+FiLM+SiLU backward: writes dx and (B, C, S) float32 partial sums for the parameters.");
}
