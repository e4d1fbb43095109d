// Bindings for the embedding op stem (csrc/ops/embedding.h): argument checks (including every
// id against the table size), then the kernel with the GIL released.
#include "bind/bind.h"
#include "bind/check.h"
#include "ops/embedding.h"

namespace fg::bind {

namespace {

template <typename I>
void check_ids_range(const py::array& ids, int64_t V, const char* fn) {
  const I* p = cptr<I>(ids);
  const int64_t n = ids.size();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < 0 || int64_t(p[i]) >= V)
      value_error(cat(fn, ": ids must be in [0, ", V, "), got ", int64_t(p[i]), " at flat index ", i));
}

void check_ids(const py::array& ids, DType di, int64_t V, const char* fn) {
  check_contiguous(ids, fn, "ids");
  if (di == DType::i32) check_ids_range<int32_t>(ids, V, fn); else check_ids_range<int64_t>(ids, V, fn);
}

template <typename F>
decltype(auto) dispatch_index(DType di, F&& f) {
  if (di == DType::i32) return f(int32_t{});
  return f(int64_t{});
}

}  // namespace

void bind_embedding(py::module_& m) {
  m.def("embedding_forward", [](const py::object& ids_obj, const py::object& table_obj) {
    const char* fn = "embedding_forward";
    py::array ids = as_array(ids_obj, fn, "ids"), table = as_array(table_obj, fn, "table");
    DType di = check_index(ids, fn, "ids");
    DType d = float_input(table, fn, "table");
    check_ndim(table, 2, fn, "table");
    const int64_t V = table.shape(0), C = table.shape(1);
    check_ids(ids, di, V, fn);
    std::vector<py::ssize_t> shape = shape_of(ids);
    shape.push_back(C);
    return dispatch_float(d, [&](auto tag) -> py::array {
      using T = decltype(tag);
      py::array out = py::array_t<T>(shape);
      T* po = ptr<T>(out);
      const T* pt = cptr<T>(table);
      const int64_t N = ids.size();
      return dispatch_index(di, [&](auto itag) -> py::array {
        using I = decltype(itag);
        const I* pi = cptr<I>(ids);
        py::gil_scoped_release nogil;
        embedding_forward<T, I>(po, pi, pt, N, V, C);
        return out;
      });
    });
  }, py::arg("ids"), py::arg("table"), "out[..., :] = table[ids[...], :]; ids int32/int64 of any shape, table (V, C).");
  m.def("embedding_backward", [](const py::object& dout_obj, const py::object& ids_obj, int64_t V,
                                  const py::object& out_obj, bool accumulate) {
    const char* fn = "embedding_backward";
    py::array dout = as_array(dout_obj, fn, "dout"), ids = as_array(ids_obj, fn, "ids");
    DType di = check_index(ids, fn, "ids");
    DType d = float_input(dout, fn, "dout");
    if (V < 1) value_error(cat(fn, ": num_embeddings must be >= 1, got ", V));
    std::vector<int64_t> want(ids.shape(), ids.shape() + ids.ndim());
    if (dout.ndim() != ids.ndim() + 1) value_error(cat(fn, ": dout must have shape ids.shape + (C,) = ", shape_str(want), " + (C,), got ", shape_str(dout)));
    const int64_t C = dout.shape(dout.ndim() - 1);
    want.push_back(C);
    check_shape(dout, want, fn, "dout");
    check_ids(ids, di, V, fn);
    py::array dtable;
    const bool have_out = !out_obj.is_none();
    if (!have_out) {
      if (accumulate) value_error(cat(fn, ": accumulate=True needs out (the array to add into)"));
    } else {
      dtable = as_array(out_obj, fn, "out");
      check_dtype(dtable, d, fn, "out");
      check_shape(dtable, {V, C}, fn, "out");
      check_contiguous(dtable, fn, "out");
      check_writeable(dtable, fn, "out");
      check_no_alias(dtable, dout, fn, "out", "dout");
    }
    return dispatch_float(d, [&](auto tag) -> py::array {
      using T = decltype(tag);
      bool zero = true;  // dtable holds zeros (or the values to add to) already
      if (!have_out) {
        // numpy.zeros uses calloc: fresh zero pages, so only rows that ids hit get touched
        dtable = py::module_::import("numpy").attr("zeros")(py::make_tuple(V, C), py::dtype::of<T>());
      } else {
        zero = accumulate;
      }
      T* pd = ptr<T>(dtable);
      const T* po = cptr<T>(dout);
      const int64_t N = ids.size();
      return dispatch_index(di, [&](auto itag) -> py::array {
        using I = decltype(itag);
        const I* pi = cptr<I>(ids);
        py::gil_scoped_release nogil;
        embedding_backward<T, I>(pd, po, pi, N, V, C, /*dtable_is_zero=*/zero);
        return dtable;
      });
    });
  }, py::arg("dout"), py::arg("ids"), py::arg("num_embeddings"), py::arg("out") = py::none(),
     py::arg("accumulate") = false,
     "dtable (V, C) = scatter-add of dout rows at ids; deterministic (same bits for any thread count).\n"
     "With out (V, C), writes there; with accumulate=True too, adds into it (only the rows ids hit\n"
     "are touched: how a tied embedding adds its gradient to the output layer's).");
}

}  // namespace fg::bind
