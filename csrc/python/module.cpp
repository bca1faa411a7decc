// fastdl._C: importing it loads libfastdl, whose static initialisers register the ops in the
// torch dispatcher (torch.ops.fastdl.*). Itself it exposes only the build information.
#include "fastdl/build_info.h"
#include "fastdl/common/checks.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdl native module: build information (the ops live under torch.ops.fastdl)";
  m.def(
      "build_info",
      [] {
        const auto info = fastdl::build_info();
        py::dict d;
        d["version"] = info.version;
        d["torch"] = info.torch;
        d["cuda"] = info.cuda;
        d["cuda_archs"] = info.cuda_archs;
        d["cpu_isa"] = info.cpu_isa;
        d["cpu_isas"] = info.cpu_isas;
        return d;
      },
      "What this build of fastdl contains: version, torch, cuda (bool), cuda_archs, cpu_isa (in "
      "use), cpu_isas (compiled).");
}
