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
- The softplus of delta + bias (torch's threshold 20), the D skip and the silu(z) gate are fused into both
  passes, so `selective_scan_compiled` has the contract of `mamba.selective_scan_reference` and autograd keeps
  none of the (batch, d_inner, L) tensors between them (the backward reruns them per channel).

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

from diffvqa_cache.files import atomic_path

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* u, dtr (delta before bias/softplus), z, y, dy, du, ddt, dz: (batch, d_inner, L); A: (d_inner, N);
   Bt, Ct, dB, dC: (batch, L, N); bias, Dv: (d_inner) or NULL; z: NULL for no gate; dA: (batch, d_inner, N);
   dD, dbias: (batch * d_inner) per work item. Work items i in [start, end) are (b, d) = (i / d_inner, i % d_inner).
   delta = softplus(dtr + bias) (torch's threshold 20) when sp, else dtr + bias;
   y = (C . h + Dv u) * silu(z). */
#define W 16
#define DEFINE(T, SUF, EXP, LOG1P)                                                                       \
static inline T delta_of_##SUF(T raw, int sp, T* slope) {                                               \
  if (!sp) { *slope = 1; return raw; }                                                                   \
  if (raw > (T)20) { *slope = 1; return raw; }                                                           \
  const T e = EXP(raw);                                                                                  \
  *slope = e / (e + (T)1);                                                                               \
  return LOG1P(e);                                                                                       \
}                                                                                                        \
                                                                                                         \
/* forward: work items are (b, block of W channels), the W channels in SIMD lanes (no horizontal sums) */ \
void scan_fwd_##SUF(const T* restrict u, const T* restrict dtr, const T* restrict A,                     \
                    const T* restrict Bt, const T* restrict Ct, const T* restrict bias,                  \
                    const T* restrict Dv, const T* restrict z, T* restrict y, int64_t sp,                \
                    int64_t D, int64_t L, int64_t N, int64_t start, int64_t end) {                       \
  const int64_t blocks = (D + W - 1) / W;                                                                \
  T* buf = (T*)malloc(sizeof(T) * (3 * L * W + 2 * N * W));                                              \
  T* us = buf; T* ds = us + L * W; T* zs = ds + L * W; T* h = zs + L * W; T* Ab = h + N * W;             \
  for (int64_t i = start; i < end; ++i) {                                                                \
    const int64_t b = i / blocks, d0 = (i % blocks) * W, cw = D - d0 < W ? D - d0 : W;                   \
    T bd[W], Dd[W];                                                                                      \
    for (int64_t c = 0; c < W; ++c) {                                                                    \
      bd[c] = c < cw && bias ? bias[d0 + c] : (T)0; Dd[c] = c < cw && Dv ? Dv[d0 + c] : (T)0;            \
      for (int64_t n = 0; n < N; ++n) Ab[n * W + c] = c < cw ? A[(d0 + c) * N + n] : (T)0;              \
    }                                                                                                    \
    /* this block's channels, time-major (L x W), the lanes past the last channel zero */               \
    memset(buf, 0, sizeof(T) * 3 * L * W);                                                               \
    for (int64_t c = 0; c < cw; ++c) {                                                                   \
      const int64_t row = (b * D + d0 + c) * L;                                                          \
      for (int64_t t = 0; t < L; ++t) {                                                                  \
        us[t * W + c] = u[row + t]; ds[t * W + c] = dtr[row + t]; if (z) zs[t * W + c] = z[row + t];     \
      }                                                                                                  \
    }                                                                                                    \
    memset(h, 0, sizeof(T) * N * W);                                                                     \
    const T* Bp = Bt + b * L * N; const T* Cp = Ct + b * L * N;                                          \
    for (int64_t t = 0; t < L; ++t) {                                                                    \
      T dl[W], du[W], acc[W];                                                                            \
      for (int64_t c = 0; c < W; ++c) {                                                                  \
        const T raw = ds[t * W + c] + bd[c];                                                             \
        dl[c] = !sp || raw > (T)20 ? raw : LOG1P(EXP(raw));                                              \
        du[c] = dl[c] * us[t * W + c]; acc[c] = Dd[c] * us[t * W + c];                                   \
      }                                                                                                  \
      for (int64_t n = 0; n < N; ++n) {                                                                  \
        const T Bn = Bp[t * N + n], Cn = Cp[t * N + n];                                                  \
        T* hn = h + n * W; const T* An = Ab + n * W;                                                     \
        for (int64_t c = 0; c < W; ++c) { hn[c] = EXP(dl[c] * An[c]) * hn[c] + du[c] * Bn; acc[c] += Cn * hn[c]; } \
      }                                                                                                  \
      if (z) for (int64_t c = 0; c < W; ++c) { const T zt = zs[t * W + c]; acc[c] *= zt / ((T)1 + EXP(-zt)); } \
      for (int64_t c = 0; c < W; ++c) us[t * W + c] = acc[c];  /* y, time-major, in u's scratch */      \
    }                                                                                                    \
    for (int64_t c = 0; c < cw; ++c) {                                                                   \
      T* yp = y + (b * D + d0 + c) * L;                                                                  \
      for (int64_t t = 0; t < L; ++t) yp[t] = us[t * W + c];                                             \
    }                                                                                                    \
  }                                                                                                      \
  free(buf);                                                                                             \
}                                                                                                        \
                                                                                                         \
void scan_bwd_##SUF(const T* restrict u, const T* restrict dtr, const T* restrict A,                     \
                    const T* restrict Bt, const T* restrict Ct, const T* restrict bias,                  \
                    const T* restrict Dv, const T* restrict z, const T* restrict dy, int64_t sp,         \
                    T* restrict du_out, T* restrict ddt_out, T* restrict dz_out, T* restrict dA,         \
                    T* restrict dB, T* restrict dC, T* restrict dD, T* restrict dbias,                   \
                    int64_t D, int64_t L, int64_t N, int64_t start, int64_t end) {                       \
  T* hs = (T*)malloc(sizeof(T) * (2 * L * N + 3 * L + 2 * N));                                           \
  T* as = hs + L * N; T* dls = as + L * N; T* slopes = dls + L; T* dys = slopes + L;                     \
  T* g = dys + L; T* gA = g + N;                                                                         \
  for (int64_t i = start; i < end; ++i) {                                                                \
    const int64_t b = i / D, d = i % D;                                                                  \
    const T* up = u + i * L; const T* dp = dtr + i * L; const T* Ap = A + d * N;                         \
    const T* Bp = Bt + b * L * N; const T* Cp = Ct + b * L * N; const T* dyp = dy + i * L;               \
    T* dBp = dB + b * L * N; T* dCp = dC + b * L * N;                                                    \
    const T bd = bias ? bias[d] : (T)0, Dd = Dv ? Dv[d] : (T)0;                                          \
    T sum_D = 0, sum_bias = 0;                                                                           \
    /* forward again, keeping every state and decay of this channel; the gate's gradient on the way */   \
    for (int64_t t = 0; t < L; ++t) {                                                                    \
      const T dl = delta_of_##SUF(dp[t] + bd, (int)sp, slopes + t), du = dl * up[t];                     \
      const T* Bq = Bp + t * N; const T* Cq = Cp + t * N; T* hq = hs + t * N; T* aq = as + t * N;        \
      const T* hp = t ? hq - N : NULL;                                                                   \
      dls[t] = dl;                                                                                       \
      for (int64_t n = 0; n < N; ++n) aq[n] = EXP(dl * Ap[n]);                                           \
      if (hp) { for (int64_t n = 0; n < N; ++n) hq[n] = aq[n] * hp[n] + du * Bq[n]; }                    \
      else { for (int64_t n = 0; n < N; ++n) hq[n] = du * Bq[n]; }                                       \
      T dyt = dyp[t];                                                                                    \
      if (z) {                                                                                           \
        T s = Dd * up[t];                                                                                \
        for (int64_t n = 0; n < N; ++n) s += Cq[n] * hq[n];                                              \
        const T zt = z[i * L + t], sg = (T)1 / ((T)1 + EXP(-zt));                                        \
        dz_out[i * L + t] = dyt * s * sg * ((T)1 + zt * ((T)1 - sg));                                    \
        dyt *= zt * sg;                                                                                  \
      }                                                                                                  \
      dys[t] = dyt;                                                                                      \
      sum_D += dyt * up[t];                                                                              \
    }                                                                                                    \
    /* adjoint, backwards in time */                                                                     \
    memset(g, 0, sizeof(T) * 2 * N);                                                                     \
    for (int64_t t = L - 1; t >= 0; --t) {                                                               \
      const T dl = dls[t], ut = up[t], dyt = dys[t];                                                     \
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
      const T draw = s_ddt * slopes[t];                                                                  \
      ddt_out[i * L + t] = draw;                                                                         \
      sum_bias += draw;                                                                                  \
      du_out[i * L + t] = s_du * dl + Dd * dyt;                                                          \
    }                                                                                                    \
    memcpy(dA + i * N, gA, sizeof(T) * N);                                                               \
    dD[i] = sum_D; dbias[i] = sum_bias;                                                                  \
  }                                                                                                      \
  free(hs);                                                                                              \
}

DEFINE(float, f32, expf, log1pf)
DEFINE(double, f64, exp, log1p)
"""

# -ffast-math lets gcc/clang vectorise exp with glibc's libmvec; compiling and linking in two steps keeps
# crtfastmath.o (which would flush denormals to zero for the whole process) out of the library.
_COMPILE_FLAGS = ["-O3", "-ffast-math", "-march=native", "-fPIC", "-std=c99"]
_ENV = "DIFFVQA_KERNEL_CACHE"
_LANES = 16  # W in the source: channels per forward work item


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
        getattr(lib, f"scan_fwd_{suf}").argtypes = [ptr] * 9 + [i64] * 6
        getattr(lib, f"scan_bwd_{suf}").argtypes = [ptr] * 9 + [i64] + [ptr] * 8 + [i64] * 5
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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(u, delta, A, Bt, Ct, *optional):
    if u.dtype not in (torch.float32, torch.float64) or u.device.type != "cpu":
        raise TypeError(f"the compiled scan takes float32/float64 CPU tensors, got {u.dtype} on {u.device}")
    if not all(t.dtype == u.dtype for t in (delta, A, Bt, Ct, *optional) if t is not None):
        raise TypeError("the compiled scan needs one dtype for u, delta, A, B, C, D, z and delta_bias")


def _contiguous(t):
    return None if t is None else t.contiguous()


class _CompiledScan(torch.autograd.Function):
    """The whole `selective_scan_reference` in the kernel: delta = softplus(delta + delta_bias), the
    recurrence, y = (C . h + D u) * silu(z); B and C as (batch, L, N). D, z, delta_bias may be None."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, D, z, delta_bias, softplus):
        lib = _library()
        u, delta, A, Bt, Ct, D, z, delta_bias = map(_contiguous, (u, delta, A, Bt, Ct, D, z, delta_bias))
        _check(u, delta, A, Bt, Ct, D, z, delta_bias)
        batch, d_inner, length = u.shape
        n = A.shape[1]
        y = torch.empty_like(u)
        fn = lib.scan_fwd_f32 if u.dtype == torch.float32 else lib.scan_fwd_f64
        _run_split(fn, batch * -(-d_inner // _LANES),
                   lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(delta_bias), _ptr(D), _ptr(z),
                              _ptr(y), int(softplus), d_inner, length, n))
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias)
        ctx.softplus = bool(softplus)
        return y

    @staticmethod
    def backward(ctx, dy):
        lib = _library()
        u, delta, A, Bt, Ct, D, z, delta_bias = ctx.saved_tensors
        dy = dy.contiguous()
        batch, d_inner, length = u.shape
        n = A.shape[1]
        parts = max(1, min(torch.get_num_threads(), batch * d_inner))
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA = u.new_empty(batch, d_inner, n)
        dD, dbias = u.new_empty(batch, d_inner), u.new_empty(batch, d_inner)
        # dB and dC sum over channels: one zeroed buffer per thread, added up at the end
        dB = u.new_zeros(parts, batch, length, n)
        dC = u.new_zeros(parts, batch, length, n)
        fn = lib.scan_bwd_f32 if u.dtype == torch.float32 else lib.scan_bwd_f64
        _run_split(fn, batch * d_inner,
                   lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(delta_bias), _ptr(D), _ptr(z),
                              _ptr(dy), int(ctx.softplus), _ptr(du), _ptr(ddelta), _ptr(dz), _ptr(dA), _ptr(dB[p]),
                              _ptr(dC[p]), _ptr(dD), _ptr(dbias), d_inner, length, n))
        return (du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dD.sum(0) if D is not None else None, dz,
                dbias.sum(0) if delta_bias is not None else None, None)


def selective_scan_compiled(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Same contract as `mamba.selective_scan_reference` (B, C: (batch, d_state, L)), on the compiled kernel
    (softplus, D skip and silu(z) gate included: autograd keeps only the inputs); differentiable in every
    input. Call `available()` first."""
    return _CompiledScan.apply(u, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, delta_bias,
                               delta_softplus)
