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

// None, or (pointer, dtype code, shape, strides) as pvdm_fast.ops._launch.tensor_arg builds it.
static pvdm::TensorArg tensor_arg(const py::object& o) {
  pvdm::TensorArg t;
  if (o.is_none()) return t;
  auto tup = o.cast<std::tuple<uintptr_t, int, std::vector<int64_t>, std::vector<int64_t>>>();
  t.ptr = std::get<0>(tup), t.dtype = std::get<1>(tup);
  t.shape = std::move(std::get<2>(tup)), t.strides = std::move(std::get<3>(tup));
  t.present = true;
  return t;
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
  m.def(
      "triplane_decode_fwd",
      [](py::object p_xy, py::object p_yt, py::object p_xt, py::object gamma, py::object beta, py::object v,
         py::object y, py::object mean, py::object rstd, double eps, uintptr_t stream) {
        pvdm::TriplaneArgs a;
        a.p_xy = tensor_arg(p_xy), a.p_yt = tensor_arg(p_yt), a.p_xt = tensor_arg(p_xt);
        a.gamma = tensor_arg(gamma), a.beta = tensor_arg(beta), a.v = tensor_arg(v), a.y = tensor_arg(y);
        a.mean = tensor_arg(mean), a.rstd = tensor_arg(rstd), a.eps = eps, a.stream = stream;
        pvdm::triplane_decode_fwd(a);
      },
      py::arg("p_xy"), py::arg("p_yt"), py::arg("p_xt"), py::arg("gamma"), py::arg("beta"), py::arg("v"),
      py::arg("y"), py::arg("mean"), py::arg("rstd"), py::arg("eps"), py::arg("stream"),
      "Triplane broadcast sum V = P_xy + P_yt + P_xt as (B, T*h*w, C), optionally with LayerNorm(V).");

  m.def(
      "triplane_decode_bwd",
      [](py::object dv, py::object dy, py::object p_xy, py::object p_yt, py::object p_xt, py::object gamma,
         py::object mean, py::object rstd, py::object a1, py::object a2, py::object d_xy, py::object d_yt,
         py::object d_xt, py::object dgamma_part, py::object dbeta_part, uintptr_t stream) {
        pvdm::TriplaneArgs a;
        a.dv = tensor_arg(dv), a.dy = tensor_arg(dy), a.p_xy = tensor_arg(p_xy), a.p_yt = tensor_arg(p_yt);
        a.p_xt = tensor_arg(p_xt), a.gamma = tensor_arg(gamma), a.mean = tensor_arg(mean), a.rstd = tensor_arg(rstd);
        a.a1 = tensor_arg(a1), a.a2 = tensor_arg(a2), a.d_xy = tensor_arg(d_xy), a.d_yt = tensor_arg(d_yt);
        a.d_xt = tensor_arg(d_xt), a.dgamma_part = tensor_arg(dgamma_part), a.dbeta_part = tensor_arg(dbeta_part);
        a.stream = stream;
        pvdm::triplane_decode_bwd(a);
      },
      py::arg("dv"), py::arg("dy"), py::arg("p_xy"), py::arg("p_yt"), py::arg("p_xt"), py::arg("gamma"),
      py::arg("mean"), py::arg("rstd"), py::arg("a1"), py::arg("a2"), py::arg("d_xy"), py::arg("d_yt"),
      py::arg("d_xt"), py::arg("dgamma_part"), py::arg("dbeta_part"), py::arg("stream"),
      "Triplane decode backward: plane gradients as sums of dV (+ LayerNorm backward) over each missing axis.");

  m.def(
      "axis_gather_fwd",
      [](py::object x, py::object token, py::object pos, py::object gamma, py::object beta, py::object s,
         py::object y, py::object mean, py::object rstd, std::vector<int64_t> grid, int64_t axis,
         int64_t lines_per_block, double eps, uintptr_t stream) {
        pvdm::AxisGatherArgs a;
        a.x = tensor_arg(x), a.token = tensor_arg(token), a.pos = tensor_arg(pos), a.gamma = tensor_arg(gamma);
        a.beta = tensor_arg(beta), a.s = tensor_arg(s), a.y = tensor_arg(y), a.mean = tensor_arg(mean);
        a.rstd = tensor_arg(rstd), a.grid = std::move(grid), a.axis = axis, a.lines_per_block = lines_per_block;
        a.eps = eps, a.stream = stream;
        pvdm::axis_gather_fwd(a);
      },
      py::arg("x"), py::arg("token"), py::arg("pos"), py::arg("gamma"), py::arg("beta"), py::arg("s"), py::arg("y"),
      py::arg("mean"), py::arg("rstd"), py::arg("grid"), py::arg("axis"), py::arg("lines_per_block"), py::arg("eps"),
      py::arg("stream"), "Axis gather: per-axis sequences (+ appended token, position embedding, LayerNorm).");

  m.def(
      "axis_gather_bwd",
      [](py::object ds, py::object dy, py::object x, py::object token, py::object pos, py::object gamma,
         py::object mean, py::object rstd, py::object dx, py::object part_pos, py::object part_gamma,
         py::object part_beta, std::vector<int64_t> grid, int64_t axis, int64_t lines_per_block,
         uintptr_t stream) {
        pvdm::AxisGatherArgs a;
        a.ds = tensor_arg(ds), a.dy = tensor_arg(dy), a.x = tensor_arg(x), a.token = tensor_arg(token);
        a.pos = tensor_arg(pos), a.gamma = tensor_arg(gamma), a.mean = tensor_arg(mean), a.rstd = tensor_arg(rstd);
        a.dx = tensor_arg(dx), a.part_pos = tensor_arg(part_pos), a.part_gamma = tensor_arg(part_gamma);
        a.part_beta = tensor_arg(part_beta), a.grid = std::move(grid), a.axis = axis;
        a.lines_per_block = lines_per_block, a.stream = stream;
        pvdm::axis_gather_bwd(a);
      },
      py::arg("ds"), py::arg("dy"), py::arg("x"), py::arg("token"), py::arg("pos"), py::arg("gamma"), py::arg("mean"),
      py::arg("rstd"), py::arg("dx"), py::arg("part_pos"), py::arg("part_gamma"), py::arg("part_beta"),
      py::arg("grid"), py::arg("axis"), py::arg("lines_per_block"), py::arg("stream"),
      "Axis gather backward: dx scattered to the grid, per-block partial sums for pos/token and LayerNorm.");
}
