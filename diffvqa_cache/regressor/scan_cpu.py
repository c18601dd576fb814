"""Compiled CPU selective scan (forward and backward) for the Mamba blocks of TCAB.

Our choice (measured in `benchmarks/tcab_cpu.py`, see BENCHMARKS.md): a small C kernel, built once per
machine with the system's C compiler (`cc`, -O3 -march=native, fast-math for the vectorised `exp`) into a
cached shared library and called through ctypes (which releases the GIL, so the work items are split over
`torch.get_num_threads()` Python threads). No torch headers are compiled (about a second to build).

- Forward: per (batch, channel), the recurrence h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t,
  y_t = C_t . h_t step by step on a d_state vector: nothing of size (batch, L, d_inner, d_state) exists.
- Backward (hand-written): per (batch, channel) the forward is run again into a scratch of L x d_state
  states and decays, then the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} is run backwards, giving
  the gradients of u, delta, A, B and C in closed form. Saved for backward: the inputs only.
- The softplus of delta + bias, the D skip and the silu(z) gate stay torch ops (autograd differentiates
  them), so `selective_scan_compiled` has the contract of `mamba.selective_scan_reference`.

When no compiler is found or the build fails, `available()` is False (the reason is logged once) and
`mamba.py` uses its pure-PyTorch scans. The library is cached under $DIFFVQA_KERNEL_CACHE, else
$XDG_CACHE_HOME/diffvqa-cache (~/.cache/diffvqa-cache; the temp folder when that is read-only), named
by a hash of the source, flags, compiler and CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import atomic_path

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* u, dt, y, dy, du, ddt: (batch, d_inner, L); A: (d_inner, N); Bt, Ct, dB, dC: (batch, L, N);
   dA: (batch, d_inner, N). Work items i in [start, end) are (b, d) = (i / d_inner, i % d_inner). */
#define DEFINE(T, SUF, EXP)                                                                              \
void scan_fwd_##SUF(const T* restrict u, const T* restrict dt, const T* restrict A,                      \
                    const T* restrict Bt, const T* restrict Ct, T* restrict y,                           \
                    int64_t D, int64_t L, int64_t N, int64_t start, int64_t end) {                       \
  T* h = (T*)malloc(sizeof(T) * 2 * N);                                                                  \
  T* a = h + N;                                                                                          \
  for (int64_t i = start; i < end; ++i) {                                                                \
    const int64_t b = i / D, d = i % D;                                                                  \
    const T* up = u + i * L; const T* dp = dt + i * L; const T* Ap = A + d * N;                          \
    const T* Bp = Bt + b * L * N; const T* Cp = Ct + b * L * N; T* yp = y + i * L;                       \
    memset(h, 0, sizeof(T) * N);                                                                         \
    for (int64_t t = 0; t < L; ++t) {                                                                    \
      const T dl = dp[t], du = dl * up[t];                                                               \
      const T* Bq = Bp + t * N; const T* Cq = Cp + t * N;                                                \
      for (int64_t n = 0; n < N; ++n) a[n] = EXP(dl * Ap[n]);                                            \
      T acc = 0;                                                                                         \
      for (int64_t n = 0; n < N; ++n) { h[n] = a[n] * h[n] + du * Bq[n]; acc += Cq[n] * h[n]; }          \
      yp[t] = acc;                                                                                       \
    }                                                                                                    \
  }                                                                                                      \
  free(h);                                                                                               \
}                                                                                                        \
                                                                                                         \
void scan_bwd_##SUF(const T* restrict u, const T* restrict dt, const T* restrict A,                      \
                    const T* restrict Bt, const T* restrict Ct, const T* restrict dy,                    \
                    T* restrict du_out, T* restrict ddt_out, T* restrict dA, T* restrict dB,             \
                    T* restrict dC, int64_t D, int64_t L, int64_t N, int64_t start, int64_t end) {       \
  T* hs = (T*)malloc(sizeof(T) * (2 * L * N + 2 * N));                                                   \
  T* as = hs + L * N; T* g = as + L * N; T* gA = g + N;                                                  \
  for (int64_t i = start; i < end; ++i) {                                                                \
    const int64_t b = i / D, d = i % D;                                                                  \
    const T* up = u + i * L; const T* dp = dt + i * L; const T* Ap = A + d * N;                          \
    const T* Bp = Bt + b * L * N; const T* Cp = Ct + b * L * N; const T* dyp = dy + i * L;               \
    T* dBp = dB + b * L * N; T* dCp = dC + b * L * N;                                                    \
    /* forward again, keeping every state and decay of this channel */                                   \
    for (int64_t t = 0; t < L; ++t) {                                                                    \
      const T dl = dp[t], du = dl * up[t];                                                               \
      const T* Bq = Bp + t * N; T* hq = hs + t * N; T* aq = as + t * N;                                  \
      const T* hp = t ? hq - N : NULL;                                                                   \
      for (int64_t n = 0; n < N; ++n) aq[n] = EXP(dl * Ap[n]);                                           \
      if (hp) { for (int64_t n = 0; n < N; ++n) hq[n] = aq[n] * hp[n] + du * Bq[n]; }                    \
      else { for (int64_t n = 0; n < N; ++n) hq[n] = du * Bq[n]; }                                       \
    }                                                                                                    \
    /* adjoint, backwards in time */                                                                     \
    memset(g, 0, sizeof(T) * 2 * N);                                                                     \
    for (int64_t t = L - 1; t >= 0; --t) {                                                               \
      const T dl = dp[t], ut = up[t], dyt = dyp[t];                                                      \
      const T* Bq = Bp + t * N; const T* Cq = Cp + t * N; const T* hq = hs + t * N;                      \
      const T* aq = as + t * N; T* dBq = dBp + t * N; T* dCq = dCp + t * N;                              \
      T s_ddt = 0, s_du = 0;                                                                             \
      for (int64_t n = 0; n < N; ++n) {                                                                  \
        const T gn = g[n] + dyt * Cq[n];                                                                 \
        const T hprev = t ? hq[n - N] : (T)0;                                                            \
        const T ga = gn * hprev * aq[n];                                                                 \
        dCq[n] += dyt * hq[n];                                                                           \
        dBq[n] += gn * dl * ut;                                                                          \
        gA[n] += ga * dl;                                                                                \
        s_ddt += ga * Ap[n] + gn * ut * Bq[n];                                                           \
        s_du += gn * Bq[n];                                                                              \
        g[n] = gn * aq[n];                                                                               \
      }                                                                                                  \
      ddt_out[i * L + t] = s_ddt;                                                                        \
      du_out[i * L + t] = s_du * dl;                                                                     \
    }                                                                                                    \
    memcpy(dA + i * N, gA, sizeof(T) * N);                                                               \
  }                                                                                                      \
  free(hs);                                                                                              \
}

DEFINE(float, f32, expf)
DEFINE(double, f64, exp)
"""

# -ffast-math lets gcc/clang vectorise exp with glibc's libmvec; compiling and linking in two steps keeps
# crtfastmath.o (which would flush denormals to zero for the whole process) out of the library.
_COMPILE_FLAGS = ["-O3", "-ffast-math", "-march=native", "-fPIC", "-std=c99"]
_ENV = "DIFFVQA_KERNEL_CACHE"


def _cpu_tag() -> str:
    """What the library's -march=native depends on: the CPU model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        keep = []
    return platform.machine() + "|" + "|".join(keep)


def _cache_dir() -> Path:
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffvqa-cache"


def _build(compiler: str, target: Path) -> None:
    """Compile and link the kernel to `target` (atomically: concurrent builds are harmless)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        src, obj = Path(work) / "scan.c", Path(work) / "scan.o"
        src.write_text(_SOURCE)
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300, check=True)
        run([compiler, *_COMPILE_FLAGS, "-c", str(src), "-o", str(obj)])
        with atomic_path(target) as tmp:
            run([compiler, "-shared", str(obj), "-o", str(tmp), "-lm"])


@functools.lru_cache(maxsize=None)
def _library():
    """The loaded kernel library, or the reason why there is none (a str)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if platform.system() != "Linux" or compiler is None:
        return f"no C compiler found (looked for $CC, cc, gcc, clang) on {platform.system()}"
    key = hashlib.sha256("\n".join([_SOURCE, " ".join(_COMPILE_FLAGS), compiler, _cpu_tag()]).encode()).hexdigest()
    name = f"selective_scan-{key[:16]}.so"
    target = _cache_dir() / name
    try:
        if not target.exists():
            try:
                _build(compiler, target)
            except PermissionError:  # a read-only home: build in the temp folder instead
                target = Path(tempfile.gettempdir()) / f"diffvqa-cache-{os.getuid()}" / name
                if not target.exists():
                    _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except subprocess.CalledProcessError as e:
        return f"building the CPU scan with {compiler} failed: {(e.stderr or '').strip()[-500:]}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"building or loading the CPU scan failed: {e}"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suf in ("f32", "f64"):
        getattr(lib, f"scan_fwd_{suf}").argtypes = [ptr] * 6 + [i64] * 5
        getattr(lib, f"scan_bwd_{suf}").argtypes = [ptr] * 11 + [i64] * 5
    return lib


def available() -> bool:
    """Whether the compiled scan can run here (builds it on the first call; logs why not, once)."""
    lib = _library()
    if isinstance(lib, str):
        _warn_once(lib)
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(why: str) -> None:
    log.warning("Mamba scan on the CPU: %s; using the slower pure-PyTorch scan", why)


@functools.lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """Threads for the kernel calls; one pool per process (a forked child cannot use its parent's threads)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mamba-scan")


def _run_split(fn, items: int, args_of) -> None:
    """Call fn(*args_of(part), start, end) over `items` work items split in torch.get_num_threads() parts."""
    parts = max(1, min(torch.get_num_threads(), items))
    bounds = [items * p // parts for p in range(parts + 1)]
    if parts == 1:
        fn(*args_of(0), 0, items)
        return
    futures = [_pool(parts, os.getpid()).submit(fn, *args_of(p), bounds[p], bounds[p + 1]) for p in range(parts)]
    for f in futures:
        f.result()


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check(u, delta, A, Bt, Ct):
    if u.dtype not in (torch.float32, torch.float64) or u.device.type != "cpu":
        raise TypeError(f"the compiled scan takes float32/float64 CPU tensors, got {u.dtype} on {u.device}")
    if not all(t.dtype == u.dtype for t in (delta, A, Bt, Ct)):
        raise TypeError("the compiled scan needs one dtype for u, delta, A, B and C")


class _CompiledScan(torch.autograd.Function):
    """y[b, d, t] = sum_n C[b, t, n] h[b, d, t, n] for the recurrence above; B and C as (batch, L, N)."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct):
        lib = _library()
        u, delta, A, Bt, Ct = (t.contiguous() for t in (u, delta, A, Bt, Ct))
        _check(u, delta, A, Bt, Ct)
        batch, d_inner, length = u.shape
        n = A.shape[1]
        y = torch.empty_like(u)
        fn = lib.scan_fwd_f32 if u.dtype == torch.float32 else lib.scan_fwd_f64
        _run_split(fn, batch * d_inner,
                   lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(y), d_inner, length, n))
        ctx.save_for_backward(u, delta, A, Bt, Ct)
        return y

    @staticmethod
    def backward(ctx, dy):
        lib = _library()
        u, delta, A, Bt, Ct = ctx.saved_tensors
        dy = dy.contiguous()
        batch, d_inner, length = u.shape
        n = A.shape[1]
        parts = max(1, min(torch.get_num_threads(), batch * d_inner))
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_empty(batch, d_inner, n)
        # dB and dC sum over channels: one zeroed buffer per thread, added up at the end
        dB = u.new_zeros(parts, batch, length, n)
        dC = u.new_zeros(parts, batch, length, n)
        fn = lib.scan_bwd_f32 if u.dtype == torch.float32 else lib.scan_bwd_f64
        _run_split(fn, batch * d_inner,
                   lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(dy), _ptr(du), _ptr(ddelta),
                              _ptr(dA), _ptr(dB[p]), _ptr(dC[p]), d_inner, length, n))
        return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0)


def selective_scan_compiled(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as `mamba.selective_scan_reference` (B, C: (batch, d_state, L)), on the compiled kernel;
    differentiable in every input. Call `available()` first."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _CompiledScan.apply(u, delta, A, B.transpose(1, 2), C.transpose(1, 2))
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y
