// Bindings for the attention op stem (csrc/ops/attention.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_attention(py::module_& m) {}

}  // namespace fg::bind
