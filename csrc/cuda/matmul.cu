// Matrix products through cuBLASLt, loaded with dlopen at first use (cublaslt_api.h says why), and
// the float32 -> bfloat16 rounding that feeds its bf16 products.
//
// Row-major to column-major: cuBLASLt is column-major, and a row-major (r, c) array is the same
// memory as a column-major (c, r) one. So D (M, N) = op(A) op(B) in row-major is computed as
// D^T (N, M) = op(B)^T op(A)^T in column-major: cuBLASLt's "A" is our b, its "B" our a, m = N,
// n = M, and each operand's stored row-major (r, c) becomes a column-major layout of c rows, r
// columns, leading dimension c. In these terms, cuBLASLt's bias (one value per row of its D) is
// one value per column of ours, its BGRADB sums op(our a) over k, and DGELU_BGRAD's bias
// gradient sums our D over its rows.
//
// Plans (the matmul descriptor, four layouts and the heuristic's algorithm) are cached per shape,
// transposes, types, epilogue, batch, pointer alignment and device, so a training step's repeated
// shapes ask the heuristic once. One mutex guards the cache and the descriptors' pointer attributes.
//
// Workspace: each product gets its own, allocated on its stream just before cublasLtMatmul and
// freed on that stream right after (stream-ordered, from a memory pool of ours per device that
// keeps freed blocks for reuse). Products running at once on two streams thus never share
// scratch memory, while products in order on one stream reuse one block. (One buffer per device
// would let two streams' products overwrite each other's workspace; one per (device, stream)
// would grow with every stream ever used, and a destroyed stream's handle can come back for a
// new stream while the old one's product still runs.) A plan whose algorithm needs no workspace
// allocates nothing; a device without memory pools gets plans limited to none.
#include <dlfcn.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/cublaslt_api.h"
#include "cuda/kernels.h"
#include "cuda/math.h"

namespace fg::cuda {
namespace {

struct Api {
  void* lib = nullptr;
  std::string path;
  lt::CreateFn create;
  lt::GetVersionFn version;
  lt::GetStatusStringFn status_string = nullptr;  // optional
  lt::DescCreateFn desc_create;
  lt::DescDestroyFn desc_destroy;
  lt::DescSetFn desc_set;
  lt::LayoutCreateFn layout_create;
  lt::LayoutDestroyFn layout_destroy;
  lt::LayoutSetFn layout_set;
  lt::PrefCreateFn pref_create;
  lt::PrefDestroyFn pref_destroy;
  lt::PrefSetFn pref_set;
  lt::HeuristicFn heuristic;
  lt::MatmulFn matmul;
};

std::mutex g_mu;
Api g_api;

template <typename F>
void sym(void* lib, const char* name, F& f, const std::string& path) {
  void* p = dlsym(lib, name);
  if (!p) throw std::runtime_error(path + " has no symbol " + name + " (not a cuBLASLt library?)");
  f = reinterpret_cast<F>(p);
}

std::string status_text(lt::Status st) {
  std::string s = "status " + std::to_string(st);
  if (g_api.status_string) {
    const char* t = g_api.status_string(st);
    if (t) s = std::string(t) + " (" + s + ")";
  }
  return s;
}

void lt_check(lt::Status st, const char* what) {
  if (st != lt::kSuccess) throw std::runtime_error(std::string("cuBLASLt ") + what + ": " + status_text(st));
}

cudaDataType_t cuda_type(Dt t) {
  switch (t) {
    case Dt::f32: return CUDA_R_32F;
    case Dt::f16: return CUDA_R_16F;
    case Dt::bf16: return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

uint32_t lt_epilogue(Epi e) {
  switch (e) {
    case Epi::none: return lt::kEpiDefault;
    case Epi::bias: return lt::kEpiBias;
    case Epi::gelu_bias: return lt::kEpiGeluAuxBias;
    case Epi::dgelu_bgrad: return lt::kEpiDGeluBGrad;
    case Epi::bgradb: return lt::kEpiBGradB;
  }
  return lt::kEpiDefault;
}

struct Plan {
  lt::MatmulDesc desc = nullptr;
  lt::MatrixLayout a = nullptr, b = nullptr, d = nullptr;  // cuBLASLt's A (our b), B (our a), C = D
  lt::MatmulAlgo algo{};
  size_t ws = 0;
  bool ok = false;      // the heuristic found an algorithm
  std::string why;      // why not, when !ok
  ~Plan() {
    if (!g_api.lib) return;
    if (a) g_api.layout_destroy(a);
    if (b) g_api.layout_destroy(b);
    if (d) g_api.layout_destroy(d);
    if (desc) g_api.desc_destroy(desc);
  }
};

struct DeviceState {
  lt::Handle handle = nullptr;
  cudaMemPool_t pool = nullptr;  // the products' workspaces (null: the device has no memory pools)
  size_t ws_bytes = 0;           // the most workspace a plan may ask for
};

// Leaked on purpose: nothing to destroy while CUDA and the library are being torn down at exit.
std::map<std::string, std::unique_ptr<Plan>>& g_plans = *new std::map<std::string, std::unique_ptr<Plan>>;
std::map<int, DeviceState>& g_devices = *new std::map<int, DeviceState>;

DeviceState& device_state(int dev) {
  DeviceState& s = g_devices[dev];
  if (!s.handle) {
    lt_check(g_api.create(&s.handle), "cublasLtCreate");
    cudaDeviceProp prop;
    FG_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    int pools = 0;
    FG_CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev));
    if (pools) {
      cudaMemPoolProps props{};
      props.allocType = cudaMemAllocationTypePinned;
      props.handleTypes = cudaMemHandleTypeNone;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = dev;
      FG_CUDA_CHECK(cudaMemPoolCreate(&s.pool, &props));
      // keep freed blocks (one per stream with a product in flight) instead of releasing them at
      // every synchronization
      uint64_t keep = ~uint64_t(0);
      FG_CUDA_CHECK(cudaMemPoolSetAttribute(s.pool, cudaMemPoolAttrReleaseThreshold, &keep));
      s.ws_bytes = prop.major >= 9 ? (size_t(32) << 20) : (size_t(4) << 20);  // NVIDIA's advice: 32 MiB on Hopper, 4 MiB before
    }
  }
  return s;
}

lt::MatrixLayout make_layout(Dt t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  lt::MatrixLayout l = nullptr;
  lt_check(g_api.layout_create(&l, cuda_type(t), uint64_t(rows), uint64_t(cols), ld), "cublasLtMatrixLayoutCreate");
  if (batch > 1) {
    const int32_t n = int32_t(batch);
    lt_check(g_api.layout_set(l, lt::kLayoutBatchCount, &n, sizeof n), "set batch count");
    lt_check(g_api.layout_set(l, lt::kLayoutStridedBatchOffset, &stride, sizeof stride), "set batch stride");
  }
  return l;
}

std::unique_ptr<Plan> make_plan(const Gemm& g, const uint32_t align[3], DeviceState& ds) {
  auto p = std::make_unique<Plan>();
  const LtProblem q = lt_problem(g);
  lt_check(g_api.desc_create(&p->desc, q.compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  lt_check(g_api.desc_set(p->desc, lt::kDescTransA, &q.opa, sizeof q.opa), "set transa");
  lt_check(g_api.desc_set(p->desc, lt::kDescTransB, &q.opb, sizeof q.opb), "set transb");
  lt_check(g_api.desc_set(p->desc, lt::kDescEpilogue, &q.epilogue, sizeof q.epilogue), "set epilogue");
  if (q.aux_ld) lt_check(g_api.desc_set(p->desc, lt::kDescEpilogueAuxLd, &q.aux_ld, sizeof q.aux_ld), "set aux ld");
  auto layout = [](const LtLayout& l) { return make_layout(l.dt, l.rows, l.cols, l.ld, l.batch, l.stride); };
  p->a = layout(q.a);
  p->b = layout(q.b);
  p->d = layout(q.d);

  lt::Preference pref = nullptr;
  lt_check(g_api.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = ds.ws_bytes;
  lt::Status st = g_api.pref_set(pref, lt::kPrefMaxWorkspaceBytes, &ws, sizeof ws);
  // cuBLASLt's A is our b, its B our a
  if (st == lt::kSuccess) st = g_api.pref_set(pref, lt::kPrefMinAlignABytes, &align[1], sizeof align[1]);
  if (st == lt::kSuccess) st = g_api.pref_set(pref, lt::kPrefMinAlignBBytes, &align[0], sizeof align[0]);
  if (st == lt::kSuccess) st = g_api.pref_set(pref, lt::kPrefMinAlignCBytes, &align[2], sizeof align[2]);
  if (st == lt::kSuccess) st = g_api.pref_set(pref, lt::kPrefMinAlignDBytes, &align[2], sizeof align[2]);
  lt::HeuristicResult res{};
  int found = 0;
  if (st == lt::kSuccess)
    st = g_api.heuristic(ds.handle, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &found);
  g_api.pref_destroy(pref);
  if (st == lt::kSuccess && found > 0) {
    p->ok = true;
    p->algo = res.algo;
    p->ws = res.workspaceSize;
  } else {
    p->why = found == 0 && st == lt::kSuccess ? "no algorithm" : status_text(st);
  }
  return p;
}

uint32_t alignment(const void* ptr) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(ptr);
  uint32_t a = 256;
  while (a > 1 && (u % a)) a >>= 1;
  return a;
}

__global__ void to_bf16_kernel(uint16_t* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = cuda_math::bf16_bits(x[i]);
}

__global__ void bf16_to_f32_kernel(float* __restrict__ y, const uint16_t* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = cuda_math::bf16_value(x[i]);
}

}  // namespace

LtProblem lt_problem(const Gemm& g) {
  LtProblem q;
  q.compute = (g.ab == Dt::f32 && g.tf32) ? lt::kCompute32FFastTF32 : lt::kCompute32F;
  q.opa = g.tb ? lt::kOpT : lt::kOpN;  // cuBLASLt's A is our b
  q.opb = g.ta ? lt::kOpT : lt::kOpN;  // its B our a
  q.m = g.N, q.n = g.M, q.k = g.K;
  // a stored row-major (r, c) array is a column-major (c rows, r columns, ld c) one
  auto stored = [&](int64_t r, int64_t c, Dt t, int64_t stride) { return LtLayout{t, c, r, c, g.batch, stride}; };
  q.a = g.tb ? stored(g.N, g.K, g.ab, g.sb) : stored(g.K, g.N, g.ab, g.sb);
  q.b = g.ta ? stored(g.K, g.M, g.ab, g.sa) : stored(g.M, g.K, g.ab, g.sa);
  q.d = stored(g.M, g.N, g.cd, g.sd);
  q.epilogue = lt_epilogue(g.epi);
  q.aux_ld = (g.epi == Epi::gelu_bias || g.epi == Epi::dgelu_bgrad) ? g.N : 0;
  return q;
}

std::string lt_load(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_api.lib) return g_api.path;
  std::string tried;
  for (const std::string& path : candidates) {
    dlerror();
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      tried += "\n  " + path + ": " + (e ? e : "not found");
      continue;
    }
    Api a;
    a.lib = lib;
    a.path = path;
    try {
      sym(lib, "cublasLtCreate", a.create, path);
      sym(lib, "cublasLtGetVersion", a.version, path);
      sym(lib, "cublasLtMatmulDescCreate", a.desc_create, path);
      sym(lib, "cublasLtMatmulDescDestroy", a.desc_destroy, path);
      sym(lib, "cublasLtMatmulDescSetAttribute", a.desc_set, path);
      sym(lib, "cublasLtMatrixLayoutCreate", a.layout_create, path);
      sym(lib, "cublasLtMatrixLayoutDestroy", a.layout_destroy, path);
      sym(lib, "cublasLtMatrixLayoutSetAttribute", a.layout_set, path);
      sym(lib, "cublasLtMatmulPreferenceCreate", a.pref_create, path);
      sym(lib, "cublasLtMatmulPreferenceDestroy", a.pref_destroy, path);
      sym(lib, "cublasLtMatmulPreferenceSetAttribute", a.pref_set, path);
      sym(lib, "cublasLtMatmulAlgoGetHeuristic", a.heuristic, path);
      sym(lib, "cublasLtMatmul", a.matmul, path);
    } catch (const std::exception& e) {
      dlclose(lib);
      tried += std::string("\n  ") + e.what();
      continue;
    }
    a.status_string = reinterpret_cast<lt::GetStatusStringFn>(dlsym(lib, "cublasLtGetStatusString"));
    g_api = a;
    return path;
  }
  throw std::runtime_error("could not load cuBLASLt (libcublasLt.so); tried:" +
                           (tried.empty() ? std::string(" nothing (no candidates)") : tried));
}

bool lt_loaded() { return g_api.lib != nullptr; }
std::string lt_path() { return g_api.path; }
size_t lt_version() { return g_api.lib ? g_api.version() : 0; }

std::string lt_key(const Gemm& g, const uint32_t align[3], int device) {
  std::ostringstream k;
  k << "dev" << device << " " << (g.ta ? 'T' : 'N') << (g.tb ? 'T' : 'N') << " M" << g.M << " N" << g.N << " K"
    << g.K << " batch" << g.batch << " s" << g.sa << "," << g.sb << "," << g.sd << " ab" << int(g.ab) << " cd"
    << int(g.cd) << " epi" << int(g.epi) << " tf32" << (g.ab == Dt::f32 && g.tf32) << " align" << align[0] << ","
    << align[1] << "," << align[2];
  return k.str();
}

size_t lt_plan_count() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_plans.size();
}

void lt_clear_plans() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_plans.clear();
}

std::string lt_matmul(const Gemm& g, void* d, const void* a, const void* b, const void* bias, void* aux,
                      void* dbias, cudaStream_t s) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_api.lib) throw std::runtime_error("lt_matmul: cuBLASLt is not loaded (call lt_load first)");
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return "";  // nothing to compute (the caller handles K == 0 via zeros)
  int dev = 0;
  FG_CUDA_CHECK(cudaGetDevice(&dev));
  DeviceState& ds = device_state(dev);
  uint32_t al[3] = {alignment(a), alignment(b), alignment(d)};
  const std::string key = lt_key(g, al, dev);
  auto it = g_plans.find(key);
  if (it == g_plans.end()) it = g_plans.emplace(key, make_plan(g, al, ds)).first;
  Plan& p = *it->second;
  if (!p.ok) return "cuBLASLt has no algorithm for " + key + ": " + p.why;
  if (g.epi == Epi::bias || g.epi == Epi::gelu_bias)
    lt_check(g_api.desc_set(p.desc, lt::kDescBiasPointer, &bias, sizeof bias), "set bias pointer");
  if (g.epi == Epi::bgradb || g.epi == Epi::dgelu_bgrad)
    lt_check(g_api.desc_set(p.desc, lt::kDescBiasPointer, &dbias, sizeof dbias), "set bias-gradient pointer");
  if (g.epi == Epi::gelu_bias || g.epi == Epi::dgelu_bgrad)
    lt_check(g_api.desc_set(p.desc, lt::kDescEpilogueAuxPointer, &aux, sizeof aux), "set aux pointer");
  const float alpha = 1.f, beta = g.accumulate ? 1.f : 0.f;
  void* ws = nullptr;  // this product's workspace, in stream order on s (see the header)
  if (p.ws) FG_CUDA_CHECK(cudaMallocFromPoolAsync(&ws, p.ws, ds.pool, s));
  const lt::Status st = g_api.matmul(ds.handle, p.desc, &alpha, b, p.a, a, p.b, &beta, d, p.d, d, p.d, &p.algo, ws,
                                     p.ws, s);
  if (ws) FG_CUDA_CHECK(cudaFreeAsync(ws, s));
  if (st == lt::kNotSupported) return "cublasLtMatmul: " + status_text(st) + " for " + key;
  lt_check(st, "cublasLtMatmul");
  return "";
}

void to_bf16(uint16_t* y, const float* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  to_bf16_kernel<<<grid_for(n), kThreads, 0, s>>>(y, x, n);
  check_launch("to_bf16");
}

void bf16_to_f32(float* y, const uint16_t* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<grid_for(n), kThreads, 0, s>>>(y, x, n);
  check_launch("bf16_to_f32");
}

}  // namespace fg::cuda
