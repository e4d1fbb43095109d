// One bind_<op>() per op stem; module.cpp calls them all. Each lives in bind/<op>.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace fg::bind {
namespace py = pybind11;
void bind_config(py::module_& m);
void bind_matmul(py::module_& m);
void bind_matmul_bf16(py::module_& m);
void bind_activations(py::module_& m);
void bind_layernorm(py::module_& m);
void bind_softmax_xent(py::module_& m);
void bind_loss(py::module_& m);
void bind_embedding(py::module_& m);
void bind_optim(py::module_& m);
void bind_attention(py::module_& m);
void bind_tokenizer(py::module_& m);
void bind_alloc(py::module_& m);
void bind_gemv(py::module_& m);
void bind_decode(py::module_& m);
void bind_torch(py::module_& m);  // entries on torch.Tensor objects (fusegrad.torch's eager path)
}  // namespace fg::bind
