// Bindings for the optim op stem (csrc/ops/optim.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_optim(py::module_& m) {}

}  // namespace fg::bind
