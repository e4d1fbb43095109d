// The fusegrad._C extension module: the only translation units that include pybind11 are
// the files in csrc/bind/. Each op stem registers its functions through bind_<op>().
#include "bind/bind.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusegrad C++ kernels (use fusegrad.ops for the public kernel API)";
  fg::bind::bind_config(m);
  fg::bind::bind_matmul(m);
  fg::bind::bind_matmul_bf16(m);
  fg::bind::bind_activations(m);
  fg::bind::bind_layernorm(m);
  fg::bind::bind_softmax_xent(m);
  fg::bind::bind_loss(m);
  fg::bind::bind_embedding(m);
  fg::bind::bind_optim(m);
  fg::bind::bind_attention(m);
  fg::bind::bind_tokenizer(m);
  fg::bind::bind_alloc(m);
  fg::bind::bind_gemv(m);
  fg::bind::bind_decode(m);
  fg::bind::bind_torch(m);
}
