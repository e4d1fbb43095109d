// Bindings for the loss op stem (csrc/ops/loss.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_loss(py::module_& m) {}

}  // namespace fg::bind
