// Bindings for the decode step (csrc/ops/decode.h): _C.GptDecoder holds the model's arrays
// (checked once, at construction) and the caches; step(ids, pos) runs one token per row.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/decode.h"

namespace fg::bind {

namespace {

const char* const kFn = "GptDecoder";

struct Decoder {
  DecodeModel m;
  py::list keep;  // every array the pointers in m point into

  const float* vec(const py::object& o, int64_t n, const char* name, bool optional = true) {
    if (o.is_none()) {
      if (!optional) value_error(cat(kFn, ": ", name, " must not be None"));
      return nullptr;
    }
    py::array a = as_array(o, kFn, name);
    if (dtype_of(a) != DType::f32) type_error(cat(kFn, ": ", name, " must be float32, got ", dtype_str(a)));
    check_contiguous(a, kFn, name);
    check_shape(a, {n}, kFn, name);
    keep.append(a);
    return cptr<float>(a);
  }
  const float* mat(const py::object& o, int64_t r, int64_t c, const char* name) {
    py::array a = as_array(o, kFn, name);
    if (dtype_of(a) != DType::f32) type_error(cat(kFn, ": ", name, " must be float32, got ", dtype_str(a)));
    check_contiguous(a, kFn, name);
    check_shape(a, {r, c}, kFn, name);
    keep.append(a);
    return cptr<float>(a);
  }
  // A weight matrix (out, in): float32 or uint16 (bf16 bits), and its bias.
  DecodeMatrix lin(const py::object& w_obj, const py::object& b_obj, int64_t out, int64_t in, const std::string& name) {
    py::array w = as_array(w_obj, kFn, name.c_str());
    const py::dtype dt = w.dtype();
    DecodeMatrix d;
    d.bf16 = dt.kind() == 'u' && dt.itemsize() == 2 && native_byte_order(dt);
    if (!d.bf16 && dtype_of(w) != DType::f32)
      type_error(cat(kFn, ": ", name, " must be float32 or uint16 (bfloat16 bits), got ", dtype_str(w)));
    check_contiguous(w, kFn, name.c_str());
    check_shape(w, {out, in}, kFn, name.c_str());
    keep.append(w);
    d.w = w.data();
    d.b = vec(b_obj, out, (name + " bias").c_str());
    d.out = out;
    d.in = in;
    return d;
  }
  float* cache(const py::object& o, const char* name) {
    py::array a = as_array(o, kFn, name);
    if (dtype_of(a) != DType::f32) type_error(cat(kFn, ": ", name, " must be float32, got ", dtype_str(a)));
    check_contiguous(a, kFn, name);
    check_writeable(a, kFn, name);
    check_shape(a, {m.Bmax, m.Hkv, m.S, m.D}, kFn, name);
    keep.append(a);
    return ptr<float>(a);
  }

  Decoder(int64_t n_head, int64_t n_kv_head, double eps, const py::object& wte, const py::object& wpe,
          const py::object& rope_cos, const py::object& rope_sin, const py::list& layers, const py::object& lnf_w,
          const py::object& lnf_b, const py::object& head, const py::list& k_caches, const py::list& v_caches) {
    py::array t = as_array(wte, kFn, "wte");
    check_ndim(t, 2, kFn, "wte");
    m.V = t.shape(0);
    m.C = t.shape(1);
    if (n_head < 1 || n_kv_head < 1 || n_head % n_kv_head || m.C % n_head)
      value_error(cat(kFn, ": n_head ", n_head, " and n_kv_head ", n_kv_head, " must divide (C = ", m.C, ")"));
    m.H = n_head;
    m.Hkv = n_kv_head;
    m.D = m.C / n_head;
    m.eps = eps;
    m.wte = mat(wte, m.V, m.C, "wte");
    if (k_caches.size() != layers.size() || v_caches.size() != layers.size())
      value_error(cat(kFn, ": need one k and one v cache per layer (", layers.size(), "), got ", k_caches.size(),
                      " and ", v_caches.size()));
    if (layers.size() == 0) value_error(cat(kFn, ": layers must not be empty"));
    py::array k0 = as_array(k_caches[0], kFn, "k_caches[0]");
    check_ndim(k0, 4, kFn, "k_caches[0]");
    m.Bmax = k0.shape(0);
    m.S = k0.shape(2);
    if (!wpe.is_none()) m.wpe = mat(wpe, m.S, m.C, "wpe");
    if (!rope_cos.is_none()) {
      if (m.D % 2) value_error(cat(kFn, ": rotary positions need an even head dim, got ", m.D));
      m.rope_cos = mat(rope_cos, m.S, m.D / 2, "rope_cos");
      m.rope_sin = mat(rope_sin, m.S, m.D / 2, "rope_sin");
    }
    const int64_t W = (m.H + 2 * m.Hkv) * m.D;
    for (size_t i = 0; i < layers.size(); ++i) {
      py::tuple p = layers[i].cast<py::tuple>();
      if (p.size() != 12)
        value_error(cat(kFn, ": layers[", i, "] must be (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, "
                        "ln2_b, fc_w, fc_b, fc2_w, fc2_b), got ", p.size(), " items"));
      const std::string L = cat("layers[", i, "].");
      DecodeLayer l;
      l.ln1_w = vec(p[0], m.C, (L + "ln1_w").c_str());
      l.ln1_b = vec(p[1], m.C, (L + "ln1_b").c_str());
      l.attn = lin(p[2], p[3], W, m.C, L + "attn_w");
      l.proj = lin(p[4], p[5], m.C, m.C, L + "proj_w");
      l.ln2_w = vec(p[6], m.C, (L + "ln2_w").c_str());
      l.ln2_b = vec(p[7], m.C, (L + "ln2_b").c_str());
      py::array fw = as_array(p[8], kFn, (L + "fc_w").c_str());
      check_ndim(fw, 2, kFn, (L + "fc_w").c_str());
      const int64_t F = fw.shape(0);
      l.fc = lin(p[8], p[9], F, m.C, L + "fc_w");
      l.fc2 = lin(p[10], p[11], m.C, F, L + "fc2_w");
      l.k_cache = cache(k_caches[i], (L + "k_cache").c_str());
      l.v_cache = cache(v_caches[i], (L + "v_cache").c_str());
      m.layers.push_back(l);
    }
    m.lnf_w = vec(lnf_w, m.C, "lnf_w");
    m.lnf_b = vec(lnf_b, m.C, "lnf_b");
    m.head = lin(head, py::none(), m.V, m.C, "head");
  }

  py::array step(const py::object& ids_obj, const py::object& pos_obj) {
    const char* fn = "GptDecoder.step";
    py::array ids = as_array(ids_obj, fn, "ids"), pos = as_array(pos_obj, fn, "pos");
    if (dtype_of(ids) != DType::i64) type_error(cat(fn, ": ids must be int64, got ", dtype_str(ids)));
    if (dtype_of(pos) != DType::i64) type_error(cat(fn, ": pos must be int64, got ", dtype_str(pos)));
    check_contiguous(ids, fn, "ids");
    check_contiguous(pos, fn, "pos");
    check_ndim(ids, 1, fn, "ids");
    const int64_t B = ids.shape(0);
    check_shape(pos, {B}, fn, "pos");
    if (B < 1 || B > m.Bmax) value_error(cat(fn, ": batch must be 1..", m.Bmax, " (the caches' rows), got ", B));
    const int64_t *pi = cptr<int64_t>(ids), *pp = cptr<int64_t>(pos);
    for (int64_t b = 0; b < B; ++b) {
      if (pi[b] < 0 || pi[b] >= m.V) value_error(cat(fn, ": ids must be in [0, ", m.V, "), got ", pi[b], " at ", b));
      if (pp[b] < 0 || pp[b] >= m.S)
        value_error(cat(fn, ": pos must be in [0, ", m.S, ") (the cache length), got ", pp[b], " at ", b));
    }
    py::array logits = py::array_t<float>(std::vector<py::ssize_t>{B, m.V});
    float* pl = ptr<float>(logits);
    py::gil_scoped_release nogil;
    gpt_decode_step(pl, m, pi, pp, B);
    return logits;
  }
};

}  // namespace

void bind_decode(py::module_& m) {
  py::class_<Decoder>(m, "_GptDecoder",
                      "One-call GPT decode steps over in-place key/value caches (used by GPT.generate).\n"
                      "GptDecoder(n_head, n_kv_head, eps, wte, wpe, rope_cos, rope_sin, layers, lnf_w, lnf_b,\n"
                      "head, k_caches, v_caches); step(ids (B,), pos (B,)) -> logits (B, V).")
      .def(py::init<int64_t, int64_t, double, py::object, py::object, py::object, py::object, py::list, py::object,
                    py::object, py::object, py::list, py::list>(),
           py::arg("n_head"), py::arg("n_kv_head"), py::arg("eps"), py::arg("wte"), py::arg("wpe"),
           py::arg("rope_cos"), py::arg("rope_sin"), py::arg("layers"), py::arg("lnf_w"), py::arg("lnf_b"),
           py::arg("head"), py::arg("k_caches"), py::arg("v_caches"))
      .def("step", &Decoder::step, py::arg("ids"), py::arg("pos"));
}

}  // namespace fg::bind
