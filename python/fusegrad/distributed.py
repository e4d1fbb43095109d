"""``fusegrad.distributed``: data-parallel training over MPI (CPU) or NCCL (GPU, through CuPy).

Names and habits follow ``torch.distributed``. The launcher makes the world: under
``mpiexec -n 4 python train.py`` every process calls ``init_process_group()`` and gets its rank;
under plain ``python`` it is a world of one and nothing MPI is imported.

    init_process_group(backend="mpi")      rank, size and local rank from the launcher
    get_rank(), get_world_size(), get_local_rank(), is_initialized(), barrier()
    all_reduce(t, op=ReduceOp.SUM), broadcast(t, src), all_gather(list, t)   NumPy arrays or Tensors
    DistributedDataParallel(model)         averaged gradients, bucketed, overlapped with backward
    ZeroRedundancyOptimizer(params, optim.AdamW, ...)   ZeRO stage 1: optimizer state sharded
    DistributedSampler(dataset)            each rank its own share of every epoch

Every collective is started non-blocking and waited on with a deadline (``timeout``, default 30
minutes as in torch): a rank that has stopped turns into a ``DistributedError`` on the others
instead of a hang. An exception that escapes any rank calls ``MPI_Abort``, which stops the whole
job at once (a rank killed by a signal is noticed by ``mpiexec`` itself).

>>> import numpy as np, fusegrad.distributed as dist
>>> dist.init_process_group()            # plain python: a world of one
>>> dist.get_rank(), dist.get_world_size()
(0, 1)
>>> x = np.array([1.0, 2.0]); dist.all_reduce(x, op=dist.ReduceOp.AVG); x
array([1., 2.])
>>> dist.destroy_process_group()
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import traceback

import numpy as np

from .tensor import Tensor, queue_callback

__all__ = ["ReduceOp", "DistributedError", "init_process_group", "destroy_process_group", "is_available",
           "is_initialized", "get_rank", "get_world_size", "get_local_rank", "get_local_world_size",
           "get_backend", "launcher_world_size", "barrier", "all_reduce", "broadcast", "all_gather", "abort",
           "DistributedDataParallel", "ZeroRedundancyOptimizer", "DistributedSampler"]

DEFAULT_TIMEOUT = 1800.0


class ReduceOp:
    SUM, AVG, MAX, MIN, PRODUCT = "sum", "avg", "max", "min", "product"


class DistributedError(RuntimeError):
    """A collective did not complete: another rank stopped, or the ranks disagree."""


class _World:
    backend = None          # "mpi", "nccl" or "local" (a world of one without MPI)
    comm = None             # mpi4py communicator (MPI and NCCL: NCCL is bootstrapped over MPI)
    nccl = None             # cupy.cuda.nccl.NcclCommunicator
    rank, size, local_rank, local_size = 0, 1, 0, 1
    timeout = DEFAULT_TIMEOUT
    old_excepthook = None


_W = _World()

# environment variables the common launchers set: (size, rank, local rank)
_LAUNCHER_ENV = [("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),                                  # MPICH hydra
                 ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
                 ("PMIX_SIZE", "PMIX_RANK", None),
                 ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")]


def launcher_world_size() -> int:
    """The world size the launcher announced in the environment (1 under plain ``python``),
    read without importing MPI; a script uses it to decide whether to initialize."""
    for size, _, _ in _LAUNCHER_ENV:
        v = os.environ.get(size)
        if v and v.isdigit():
            return int(v)
    return 1


def is_available() -> bool:
    """True when mpi4py can be imported (the "mpi" backend is usable)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fusegrad.distributed: the 'mpi' backend needs mpi4py and an MPI library: "
                          "pip install \"fusegrad[distributed]\" (mpi4py + mpich)") from e
    return MPI


def init_process_group(backend: str = "mpi", timeout: float | None = None, abort_on_exception: bool = True):
    """Join the world the launcher started. ``backend``: ``"mpi"`` (CPU, NumPy arrays) or
    ``"nccl"`` (CuPy arrays on the GPU ``local_rank``; bootstrapped over MPI). Under plain
    ``python`` (no launcher in the environment) it is a world of one and MPI is not loaded.
    ``timeout`` (seconds, default 1800, or ``FUSEGRAD_DIST_TIMEOUT``) bounds every wait on a
    collective. With ``abort_on_exception`` (default) an exception that escapes this process
    prints its traceback with the rank and aborts every rank (``MPI_Abort``)."""
    if _W.backend is not None:
        raise RuntimeError("init_process_group: already initialized (call destroy_process_group first)")
    if backend not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi' or 'nccl', got {backend!r}")
    if timeout is None:
        timeout = float(os.environ.get("FUSEGRAD_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if not timeout > 0:
        raise ValueError(f"init_process_group: timeout must be > 0 seconds, got {timeout}")
    if backend == "nccl":
        _import_nccl()                                      # a clear error before anything starts
    if launcher_world_size() == 1:                          # plain python: MPI is not needed
        _W.comm, _W.rank, _W.size, _W.local_rank, _W.local_size = None, 0, 1, 0, 1
    else:
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        _W.comm, _W.rank, _W.size = comm, comm.Get_rank(), comm.Get_size()
        _W.local_rank, _W.local_size = local.Get_rank(), local.Get_size()
        local.Free()
    _W.timeout = timeout
    if backend == "nccl":
        _W.nccl = _init_nccl(_W.comm, _W.rank, _W.size, _W.local_rank)
    _W.backend = backend if (backend == "nccl" or _W.comm is not None) else "local"
    if abort_on_exception and _W.size > 1:
        _W.old_excepthook = sys.excepthook
        sys.excepthook = _abort_hook


def _import_nccl():
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as e:
        raise ImportError("init_process_group(backend='nccl'): needs CuPy with NCCL "
                          "(pip install \"fusegrad[cuda]\") and an NVIDIA GPU; use backend='mpi' on CPUs") from e
    if not nccl.available:
        raise RuntimeError("init_process_group(backend='nccl'): this CuPy build has no NCCL")
    return cupy, nccl


def _init_nccl(comm, rank, size, local_rank):
    cupy, nccl = _import_nccl()
    ndev = cupy.cuda.runtime.getDeviceCount()
    if ndev == 0:
        raise RuntimeError("init_process_group(backend='nccl'): no CUDA device is visible")
    cupy.cuda.Device(local_rank % ndev).use()
    uid = nccl.get_unique_id() if rank == 0 else None
    if size > 1:
        uid = comm.bcast(uid, root=0)                       # the NCCL id travels over MPI
    return nccl.NcclCommunicator(size, uid, rank)


def _abort_hook(etype, value, tb):
    # one write, then a moment for the launcher to forward it: MPI_Abort tears down mpiexec's
    # output forwarding, and a traceback written separately was seen lost (the header alone arrived)
    sys.stderr.write(f"[fusegrad.distributed rank {_W.rank}/{_W.size}] uncaught exception; aborting every rank\n"
                     + "".join(traceback.format_exception(etype, value, tb)))
    sys.stderr.flush()
    time.sleep(0.2)
    abort(1)


def abort(code: int = 1):
    """Stop every rank now (``MPI_Abort``); in a world of one, exit the process."""
    if _W.comm is not None and _W.size > 1:
        _W.comm.Abort(code)
    os._exit(code)


def destroy_process_group():
    """Leave the world (the process can initialize again afterwards)."""
    if _W.old_excepthook is not None:
        sys.excepthook, _W.old_excepthook = _W.old_excepthook, None
    _W.backend, _W.comm, _W.nccl = None, None, None
    _W.rank, _W.size, _W.local_rank, _W.local_size = 0, 1, 0, 1


def is_initialized() -> bool:
    return _W.backend is not None


def get_backend() -> str | None:
    return _W.backend


# Unlike torch these answer for a world of one before init_process_group, so a script runs
# unchanged under plain python.
def get_rank() -> int:
    return _W.rank


def get_world_size() -> int:
    return _W.size


def get_local_rank() -> int:
    return _W.local_rank


def get_local_world_size() -> int:
    return _W.local_size


def _need_init(name):
    if _W.backend is None:
        raise RuntimeError(f"{name}: call fusegrad.distributed.init_process_group() first")


# ----- collectives -----

def _buffer(x, name, writeable=True):
    """The contiguous array behind ``x`` (a NumPy/CuPy array or a Tensor) that a collective
    reads and writes in place."""
    a = x.data if isinstance(x, Tensor) else x
    if not hasattr(a, "dtype") or not hasattr(a, "flags"):
        raise TypeError(f"{name}: expected a NumPy array or a fusegrad Tensor, got {type(x).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: the array must be C-contiguous (the collective writes it in place)")
    if writeable and isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{name}: the array is read-only (the collective writes it in place)")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: dtype {a.dtype} is not supported (bool, integers, float32, float64)")
    return a


_OPS = (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MAX, ReduceOp.MIN, ReduceOp.PRODUCT)


def _check_op(op, name, dtype):
    if op not in _OPS:
        raise ValueError(f"{name}: op must be one of ReduceOp.SUM/AVG/MAX/MIN/PRODUCT, got {op!r}")
    if op == ReduceOp.AVG and dtype.kind != "f":
        raise TypeError(f"{name}: ReduceOp.AVG needs a floating-point array, got {dtype}")


def _mpi_op(op):
    MPI = _import_mpi()
    return {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.MAX: MPI.MAX, ReduceOp.MIN: MPI.MIN,
            ReduceOp.PRODUCT: MPI.PROD}[op]


class Work:
    """A collective in flight (``async_op=True``): ``wait()`` blocks until it is done, with the
    world's timeout; ``is_completed()`` asks without blocking (and lets MPI progress)."""

    def __init__(self, req, name, finish=None):
        self._req, self._name, self._finish, self._done = req, name, finish, req is None
        if self._done and finish is not None:
            finish()

    def is_completed(self) -> bool:
        if not self._done and self._req.Test():
            self._complete()
        return self._done

    def _complete(self):
        self._done = True
        if self._finish is not None:
            self._finish()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._done:
            _wait_all([self._req], self._name, timeout)
            self._complete()
        return True


def _result(work, async_op):
    """torch's habit: the Work when ``async_op``, else wait and return None."""
    if async_op:
        return work
    work.wait()
    return None


def _wait_all(reqs, name, timeout=None):
    """Wait for MPI requests, polling with short sleeps (a blocking MPI wait spins a core that
    a rank sharing the machine needs), and raise DistributedError after ``timeout`` seconds."""
    MPI = _import_mpi()
    timeout = _W.timeout if timeout is None else timeout
    if MPI.Request.Testall(reqs):
        return
    t0 = time.perf_counter()
    nap = 2e-5
    while not MPI.Request.Testall(reqs):
        if time.perf_counter() - t0 > timeout:
            raise DistributedError(
                f"{name}: rank {_W.rank} waited {timeout:g} s for the other {_W.size - 1} rank(s) without an "
                f"answer: a rank has stopped (raised, was killed, or is stuck) or the ranks called different "
                f"collectives. Set the limit with init_process_group(timeout=...) or FUSEGRAD_DIST_TIMEOUT.")
        time.sleep(nap)
        nap = min(nap * 2, 1e-3)


def _nccl_call(fn_name, a, *args):
    import cupy
    from cupy.cuda import nccl
    types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
             np.dtype(np.int32): nccl.NCCL_INT32, np.dtype(np.int64): nccl.NCCL_INT64,
             np.dtype(np.float16): nccl.NCCL_FLOAT16}
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{fn_name}: the nccl backend works on CuPy arrays on the GPU "
                        f"(fusegrad's tensors are host arrays until its CUDA path exists); got {type(a).__name__}")
    if a.dtype not in types:
        raise TypeError(f"{fn_name}: dtype {a.dtype} is not supported by NCCL here")
    return types[a.dtype], cupy.cuda.get_current_stream().ptr, nccl


def all_reduce(tensor, op=ReduceOp.SUM, async_op: bool = False):
    """Reduce ``tensor`` (array or Tensor) over all ranks, in place; with ``async_op`` return
    a ``Work`` to ``wait()`` on."""
    _need_init("all_reduce")
    a = _buffer(tensor, "all_reduce")
    _check_op(op, "all_reduce", a.dtype)
    if _W.backend == "nccl":
        return _nccl_all_reduce(a, op, async_op)
    if _W.size == 1 or a.size == 0:
        w = Work(None, "all_reduce")
    else:
        MPI = _import_mpi()
        finish = (lambda: np.divide(a, _W.size, out=a)) if op == ReduceOp.AVG else None
        w = Work(_W.comm.Iallreduce(MPI.IN_PLACE, a, _mpi_op(op)), "all_reduce", finish)
    return _result(w, async_op)


def _nccl_all_reduce(a, op, async_op):
    dt, stream, nccl = _nccl_call("all_reduce", a)
    ops = {ReduceOp.SUM: nccl.NCCL_SUM, ReduceOp.AVG: nccl.NCCL_SUM, ReduceOp.MAX: nccl.NCCL_MAX,
           ReduceOp.MIN: nccl.NCCL_MIN, ReduceOp.PRODUCT: nccl.NCCL_PROD}
    _W.nccl.allReduce(a.data.ptr, a.data.ptr, a.size, dt, ops[op], stream)
    if op == ReduceOp.AVG:
        a /= _W.size
    w = Work(None, "all_reduce")      # ordered on the stream: later GPU work sees the result
    return _result(w, async_op)


def broadcast(tensor, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``tensor`` into every rank's, in place."""
    _need_init("broadcast")
    a = _buffer(tensor, "broadcast")
    if not (isinstance(src, (int, np.integer)) and 0 <= src < _W.size):
        raise ValueError(f"broadcast: src must be a rank in [0, {_W.size}), got {src!r}")
    if _W.backend == "nccl":
        dt, stream, _ = _nccl_call("broadcast", a)
        _W.nccl.bcast(a.data.ptr, a.size, dt, int(src), stream)
        w = Work(None, "broadcast")
    elif _W.size == 1 or a.size == 0:
        w = Work(None, "broadcast")
    else:
        w = Work(_W.comm.Ibcast(a, root=int(src)), "broadcast")
    return _result(w, async_op)


def all_gather(tensor_list, tensor, async_op: bool = False):
    """Fill ``tensor_list`` (one array or Tensor per rank, each shaped like ``tensor``) with
    every rank's ``tensor``: ``tensor_list[r]`` gets rank r's."""
    _need_init("all_gather")
    a = _buffer(tensor, "all_gather", writeable=False)
    if not isinstance(tensor_list, (list, tuple)) or len(tensor_list) != _W.size:
        raise ValueError(f"all_gather: tensor_list must be a list of {_W.size} arrays (one per rank), "
                         f"got {type(tensor_list).__name__} of length {len(tensor_list) if hasattr(tensor_list, '__len__') else '?'}")
    outs = [_buffer(t, f"all_gather: tensor_list[{i}]") for i, t in enumerate(tensor_list)]
    for i, o in enumerate(outs):
        if o.shape != a.shape or o.dtype != a.dtype:
            raise ValueError(f"all_gather: tensor_list[{i}] is {o.dtype}{o.shape}, tensor is {a.dtype}{a.shape}")
    if _W.backend == "nccl":
        import cupy
        dt, stream, _ = _nccl_call("all_gather", a)
        flat = cupy.empty((_W.size,) + a.shape, a.dtype)
        _W.nccl.allGather(a.data.ptr, flat.data.ptr, a.size, dt, stream)
        for i, o in enumerate(outs):
            o[...] = flat[i]
        w = Work(None, "all_gather")
    elif _W.size == 1:
        outs[0][...] = a
        w = Work(None, "all_gather")
    else:
        flat = np.empty((_W.size,) + a.shape, a.dtype)

        def scatter():
            for i, o in enumerate(outs):
                o[...] = flat[i]
        w = Work(_W.comm.Iallgather(a, flat), "all_gather", scatter)
    return _result(w, async_op)


def barrier():
    """Wait until every rank has reached its barrier() (bounded by the timeout)."""
    _need_init("barrier")
    if _W.size > 1:
        Work(_W.comm.Ibarrier(), "barrier").wait()


def _allgatherv_inplace(flat, counts, name):
    """Every rank's segment of ``flat`` (rank r owns ``counts[r]`` elements, in rank order) to
    every rank; the collective behind ZeRO-1's gather of updated parameters."""
    if _W.size == 1:
        return
    MPI = _import_mpi()
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    Work(_W.comm.Iallgatherv(MPI.IN_PLACE, [flat, (list(map(int, counts)), displs)]), name).wait()


def _allgather_object(obj, name):
    """Every rank's picklable ``obj``, in rank order, with the world's deadline on both waits (the
    sizes, then the bytes): mpi4py's ``comm.allgather`` blocks without one, so a rank that died
    during a ZeRO-1 checkpoint would hang the others."""
    if _W.size == 1:
        return [obj]
    import pickle
    MPI = _import_mpi()
    mine = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
    sizes = np.zeros(_W.size, dtype=np.int64)
    Work(_W.comm.Iallgather(np.array([mine.size], dtype=np.int64), sizes), name).wait()
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    buf = np.empty(int(sizes.sum()), dtype=np.uint8)
    Work(_W.comm.Iallgatherv(mine, [buf, (list(map(int, sizes)), displs)]), name).wait()
    return [pickle.loads(buf[d:d + int(n)].tobytes()) for d, n in zip(displs, sizes)]


# ----- DistributedDataParallel -----

def _signature(params):
    """Shapes and dtypes of a parameter list, hashed, with their count and total size: what
    every rank must agree on before any gradient is exchanged."""
    text = ";".join(f"{tuple(p.shape)}:{p.dtype.str}" for p in params)
    h = hashlib.sha256(text.encode()).digest()
    return np.array([len(params), sum(int(p.data.size) for p in params),
                     int.from_bytes(h[:7], "little"), int.from_bytes(h[7:14], "little")], dtype=np.int64)


def _check_same_model(params, name):
    sig = _signature(params)
    every = [np.empty_like(sig) for _ in range(_W.size)]
    all_gather(every, sig)
    bad = [r for r in range(_W.size) if not np.array_equal(every[r], every[0])]
    if bad:
        desc = ", ".join(f"rank {r}: {int(every[r][0])} parameters, {int(every[r][1]):,} values"
                         for r in [0] + bad)
        raise ValueError(f"{name}: the ranks hold different models (parameter shapes or dtypes differ; {desc}). "
                         f"Every rank must build the same model before wrapping it.")


class _Bucket:
    __slots__ = ("params", "offsets", "flat", "pending", "work", "index")

    def __init__(self, params, index):
        self.params, self.index = params, index
        sizes = [int(p.data.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.flat = np.empty(self.offsets[-1], dtype=params[0].dtype)
        self.pending, self.work = len(params), None


class DistributedDataParallel:
    """Wrap ``model`` so that ``backward()`` leaves every rank with the gradient averaged over
    all ranks (as one process with the union of their batches would get, up to rounding).

    At wrap time every rank checks that all hold the same parameter shapes (a clear
    ``ValueError`` on every rank otherwise) and takes rank 0's parameter values. Gradients
    are grouped into buckets of about ``bucket_cap_mb`` MB in reverse parameter order (the
    order backward produces them); as soon as a bucket's last gradient is final, its
    non-blocking all-reduce (``MPI_Iallreduce``) starts, so communication overlaps the rest
    of the backward pass. ``backward()`` returns once every bucket has been reduced and the
    averages written back into ``.grad``. Parameters that got no gradient count as zero (their
    bucket, and the ones after it, since every rank starts buckets in the same order, wait for
    the end of backward).

    Call the wrapper like the model; ``ddp.module`` is the model. Inside ``with
    ddp.no_sync():`` gradients only accumulate locally; the next backward outside it
    averages the accumulated sum.

    >>> import fusegrad.distributed as dist
    >>> from fusegrad import nn
    >>> dist.init_process_group()
    >>> ddp = dist.DistributedDataParallel(nn.Linear(3, 2))
    >>> dist.destroy_process_group()
    """

    def __init__(self, model, bucket_cap_mb: float = 25.0, broadcast_parameters: bool = True):
        _need_init("DistributedDataParallel")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        if _W.backend == "nccl":
            raise NotImplementedError("DistributedDataParallel: the nccl backend needs fusegrad's CUDA tensors, "
                                      "which do not exist yet; use backend='mpi'")
        self.module = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        _check_same_model(params, "DistributedDataParallel")
        if broadcast_parameters and _W.size > 1:
            for group in _by_dtype(params, float("inf")):
                flat = np.concatenate([p.data.reshape(-1) for p in group])
                broadcast(flat, 0)
                _unflatten(flat, group)
        cap = max(1, int(bucket_cap_mb * 2 ** 20))
        self.buckets = [_Bucket(b, i) for i, b in enumerate(_by_dtype(params[::-1], cap))]
        self._where = {}
        for b in self.buckets:
            for j, p in enumerate(b.params):
                self._where[id(p)] = (b, j)
        self._sync = True
        self._armed = False        # a backward pass has started using the buckets
        self._next = 0             # the next bucket to launch (launched in index order on every rank)
        self.comm_wait_s = 0.0     # time backward spent waiting for reductions (last pass)
        self.started_early = 0     # buckets whose reduction started while backward still ran (last pass)
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def __call__(self, *args, **kw):
        return self.module(*args, **kw)

    forward = __call__

    def parameters(self):
        return self.module.parameters()

    def named_parameters(self, *a, **kw):
        return self.module.named_parameters(*a, **kw)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, sd, strict=True):
        return self.module.load_state_dict(sd, strict)

    def train(self, mode=True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        self.module.zero_grad(set_to_none)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate local gradients (no communication)."""
        old, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = old

    def remove_hooks(self):
        for h in self._handles:
            h.remove()

    # ----- the backward pass -----
    def _on_grad(self, p):
        if not self._sync or _W.size == 1:
            return
        if not self._armed:
            self._armed = True
            queue_callback(self._finish)
        b, j = self._where[id(p)]
        b.flat[b.offsets[j]:b.offsets[j + 1]] = p.grad.data.reshape(-1)
        b.pending -= 1
        self._launch_ready()

    def _launch_ready(self):
        MPI = _import_mpi()
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            b = self.buckets[self._next]
            b.work = _W.comm.Iallreduce(MPI.IN_PLACE, b.flat, MPI.SUM)
            self._next += 1
        # let MPI move the reductions in flight (MPICH progresses only inside MPI calls)
        if self._next:
            MPI.Request.Testall([b.work for b in self.buckets[:self._next]])

    def _finish(self):
        t0 = time.perf_counter()
        self.started_early = self._next
        try:
            for b in self.buckets[self._next:]:         # parameters that got no gradient: zero
                for j, p in enumerate(b.params):
                    if p.grad is None:
                        b.flat[b.offsets[j]:b.offsets[j + 1]] = 0
                        b.pending -= 1
                b.pending = 0
            self._launch_ready()
            _wait_all([b.work for b in self.buckets], "DistributedDataParallel backward")
            for b in self.buckets:
                b.flat /= _W.size
                for j, p in enumerate(b.params):
                    g = b.flat[b.offsets[j]:b.offsets[j + 1]].reshape(p.shape)
                    if p.grad is None:
                        p.grad = Tensor(g.copy())
                    else:
                        p.grad.data[...] = g
        finally:
            self.comm_wait_s = time.perf_counter() - t0
            for b in self.buckets:
                b.pending, b.work = len(b.params), None
            self._armed, self._next = False, 0


def _by_dtype(params, cap_bytes):
    """Consecutive runs of same-dtype parameters, each run cut at about ``cap_bytes``."""
    out, cur, size = [], [], 0
    for p in params:
        if cur and (p.dtype != cur[0].dtype or size >= cap_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.data.nbytes
    if cur:
        out.append(cur)
    return out


def _unflatten(flat, params):
    o = 0
    for p in params:
        n = p.data.size
        p.data[...] = flat[o:o + n].reshape(p.shape)
        o += n


# ----- ZeRO stage 1 -----

class ZeroRedundancyOptimizer:
    """ZeRO stage 1 (DeepSpeed's, llm.c's): each rank keeps optimizer state only for its
    share of the parameters and updates only those; the updated shares are then all-gathered,
    so every rank ends the step with the same parameters. Optimizer memory per rank falls by
    about the world size. Gradients must already be averaged (DistributedDataParallel).

    The parameters are cut, in order, into one contiguous range per rank of about equal size
    (whole parameters, so each update is the wrapped optimizer's own, bit for bit).
    ``param_groups`` are the full groups: schedulers that set ``lr`` work unchanged.
    ``state_dict()`` is collective and returns the full state, in the wrapped optimizer's
    format, on every rank (so a checkpoint loads in one process); ``load_state_dict`` takes
    that format too.

    >>> import fusegrad.distributed as dist
    >>> from fusegrad import nn, optim
    >>> dist.init_process_group()
    >>> opt = dist.ZeroRedundancyOptimizer(nn.Linear(3, 2).parameters(), optim.AdamW, lr=1e-3)
    >>> dist.destroy_process_group()
    """

    def __init__(self, params, optimizer_class, **defaults):
        _need_init("ZeroRedundancyOptimizer")
        full = optimizer_class(params, **defaults)     # validates and builds the groups
        self.optim_class, self.defaults = optimizer_class, full.defaults
        self.param_groups = full.param_groups
        self._all = [p for g in self.param_groups for p in g["params"]]
        _check_same_model(self._all, "ZeroRedundancyOptimizer")
        sizes = np.array([p.data.size for p in self._all], dtype=np.int64)
        ends = np.cumsum(sizes)
        total = int(ends[-1]) if len(ends) else 0
        # rank r owns the parameters whose end falls in (r, r + 1] x total / size
        owner = np.minimum((ends * _W.size - 1) // max(total, 1), _W.size - 1) if total else np.zeros(len(sizes), int)
        owner = np.maximum.accumulate(owner.astype(int))
        self.owner = owner.tolist()
        mine = {id(p) for p, o in zip(self._all, self.owner) if o == _W.rank}
        local_groups = [{**{k: v for k, v in g.items() if k != "params"},
                         "params": [p for p in g["params"] if id(p) in mine]} for g in self.param_groups]
        self._local = optimizer_class(local_groups, **defaults) if mine else None
        self._gather_groups = _by_dtype(self._all, float("inf"))

    @property
    def state(self):
        return self._local.state if self._local is not None else {}

    def zero_grad(self, set_to_none: bool = True):
        for p in self._all:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def step(self):
        if self._local is not None:
            for g, lg in zip(self.param_groups, self._local.param_groups):
                lg.update({k: v for k, v in g.items() if k != "params"})
            self._local.step()
        if _W.size == 1:
            return
        owner = dict(zip(map(id, self._all), self.owner))
        for group in self._gather_groups:
            flat = np.concatenate([p.data.reshape(-1) for p in group])
            counts = np.zeros(_W.size, dtype=np.int64)
            for p in group:
                counts[owner[id(p)]] += p.data.size
            _allgatherv_inplace(flat, counts, "ZeroRedundancyOptimizer.step")
            _unflatten(flat, group)

    def state_dict(self):
        """The full optimizer state (every rank's share), in the wrapped optimizer's format.
        Collective: every rank must call it."""
        local = self._local.state_dict() if self._local is not None else {"state": {}, "param_groups": []}
        # renumber local indices to positions in the full parameter list, then share them
        mine = [i for i, o in enumerate(self.owner) if o == _W.rank]
        state = {mine[i]: s for i, s in local["state"].items()}
        shares = _allgather_object(state, "ZeroRedundancyOptimizer.state_dict")
        full = {}
        for s in shares:
            full.update(s)
        ids, groups = {}, []
        for g in self.param_groups:
            idx = []
            for p in g["params"]:
                ids.setdefault(id(p), len(ids))
                idx.append(ids[id(p)])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": idx})
        return {"state": dict(sorted(full.items())), "param_groups": groups}

    def load_state_dict(self, sd):
        """Load a full state (from ``state_dict()`` or from the wrapped optimizer in one
        process); each rank keeps its share."""
        tmp = self.optim_class(self.param_groups, **self.defaults)
        tmp.load_state_dict(sd)                          # validates against the full model
        for g, sg in zip(self.param_groups, tmp.param_groups):
            g.update({k: v for k, v in sg.items() if k != "params"})
        if self._local is not None:
            self._local.state = {k: v for k, v in tmp.state.items() if k in {id(p) for g in self._local.param_groups for p in g["params"]}}


# ----- data -----

class DistributedSampler:
    """Indices of this rank's share of a dataset, for ``DataLoader(ds, sampler=...)``.

    Each epoch is one permutation (seeded by ``seed + epoch`` when ``shuffle``), padded by
    repeating its start (or, with ``drop_last``, cut) to a multiple of the world size; rank r
    takes positions r, r + size, ... so no two ranks see the same example in an epoch. Call
    ``set_epoch(e)`` before each epoch, as with torch's sampler."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not (isinstance(self.num_replicas, (int, np.integer)) and self.num_replicas >= 1):
            raise ValueError(f"DistributedSampler: num_replicas must be an integer >= 1, got {num_replicas!r}")
        if not (isinstance(self.rank, (int, np.integer)) and 0 <= self.rank < self.num_replicas):
            raise ValueError(f"DistributedSampler: rank must be in [0, {self.num_replicas}), got {rank!r}")
        self.dataset, self.shuffle, self.seed, self.drop_last = dataset, shuffle, seed, drop_last
        self.epoch = 0
        n = len(dataset)
        self.num_samples = n // self.num_replicas if drop_last else -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        n = len(self.dataset)
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.total_size > n:
            order = np.resize(order, self.total_size)       # repeats from the start
        order = order[:self.total_size]
        return iter(order[self.rank::self.num_replicas].tolist())
