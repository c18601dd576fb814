"""Compiled CPU kernels for the Mamba layers of TCAB: build, cache and call `cpu_kernels.c`.

Our choice (measured in `benchmarks/tcab_cpu.py`, see BENCHMARKS.md): small C kernels, built once per machine
with the system's C compiler (`cc`, -O3 -march=native -ffast-math) into a cached shared library and called
through ctypes (which releases the GIL, so the work items are split over `torch.get_num_threads()` Python
threads). No torch headers are compiled (about a second to build). Layout token-major, (batch, L, channels),
as the layer's projections produce it:
- `scan_forward` / `scan_backward`: the selective scan with the softplus of delta + bias (torch's threshold
  20), the D skip and the silu(z) gate fused in; 16 channels in SIMD lanes; the forward keeps the state at
  the start of every chunk of 32 tokens, from which the backward rebuilds a chunk's states and runs the
  adjoint through it (the gradients of u, delta, A, B, C, D, z and the bias in closed form). Nothing of size
  (batch, L, d_inner, d_state) exists.
- `conv_forward` / `conv_backward`: the causal depthwise conv + SiLU.
- `selective_scan_tokens` is the scan's autograd function, and `selective_scan_compiled` has the contract and
  layout of `mamba.selective_scan_reference` (for tests, benchmarks and `doctor`); `mamba_cpu.py` uses the four
  functions above directly for a whole layer.

When no compiler is found or the build fails, `available()` is False (the reason is logged once) and
`mamba.py` uses its pure-PyTorch path. The library is cached under $DIFFVQA_KERNEL_CACHE, else
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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from diffvqa_cache.files import atomic_path

log = logging.getLogger(__name__)

_SOURCE = (Path(__file__).parent / "cpu_kernels.c").read_text()

# -ffast-math lets the compiler vectorise the lanes' conditionals and the inlined exp; compiling and linking in two
# steps keeps crtfastmath.o (which would flush denormals to zero for the whole process) out of the library.
_COMPILE_FLAGS = ["-O3", "-ffast-math", "-march=native", "-fPIC", "-std=c99"]
_ENV = "DIFFVQA_KERNEL_CACHE"
_LANES = 16  # W in the source: channels per work item


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
        getattr(lib, f"scan_fwd_{suf}").argtypes = [ptr] * 10 + [i64] * 6
        getattr(lib, f"scan_bwd_{suf}").argtypes = [ptr] * 10 + [i64] + [ptr] * 9 + [i64] * 5
        getattr(lib, f"conv_fwd_{suf}").argtypes = [ptr] * 4 + [i64] * 5
        getattr(lib, f"conv_bwd_{suf}").argtypes = [ptr] * 7 + [i64] * 5
    lib.chunk_tokens.restype = i64
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


@functools.lru_cache(maxsize=8)
def _pool(workers: int, pid: int, caller: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mamba-scan")


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """`workers` threads for the CPU kernels' work; one pool per process (a forked child cannot use its parent's
    threads) and calling thread (`mamba_cpu` calls from two threads at once)."""
    return _pool(workers, os.getpid(), threading.get_ident())


def _run_split(fn, items: int, args_of, parts: int | None = None) -> None:
    """Call fn(*args_of(part), start, end) over `items` work items split in `parts` (default
    torch.get_num_threads()) parts."""
    parts = parts or max(1, min(torch.get_num_threads(), items))
    bounds = [items * p // parts for p in range(parts + 1)]
    if parts == 1:
        fn(*args_of(0), 0, items)
        return
    futures = [thread_pool(parts).submit(fn, *args_of(p), bounds[p], bounds[p + 1]) for p in range(parts)]
    for f in futures:
        f.result()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(first, *others):
    """The kernels take float32 or float64 CPU tensors, one dtype per call (None: an absent optional input)."""
    if first.dtype not in (torch.float32, torch.float64) or first.device.type != "cpu":
        raise TypeError(f"the compiled scan takes float32/float64 CPU tensors, got {first.dtype} on {first.device}")
    if not all(t.dtype == first.dtype for t in others if t is not None):
        raise TypeError("the compiled scan needs one dtype for all its inputs (u, delta, A, B, C, D, z, delta_bias)")


def _contiguous(t):
    return None if t is None else t.contiguous()


def _kernel(name: str, dtype: torch.dtype):
    return getattr(_library(), f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _work_items(batch: int, d_inner: int) -> int:
    return batch * -(-d_inner // _LANES)


def scan_forward(u, delta, A, Bt, Ct, D, z, delta_bias, softplus: bool, keep_states: bool):
    """The scan kernel's forward, token-major (u, delta, z: (batch, L, d_inner); Bt, Ct: (batch, L, N); D, z,
    delta_bias may be None) -> (y, states): states = the state at the start of every chunk of tokens (what
    `scan_backward` needs besides the inputs) when keep_states, else None."""
    u, delta, A, Bt, Ct, D, z, delta_bias = map(_contiguous, (u, delta, A, Bt, Ct, D, z, delta_bias))
    _check(u, delta, A, Bt, Ct, D, z, delta_bias)
    batch, length, d_inner = u.shape
    n = A.shape[1]
    y = torch.empty_like(u)
    states = u.new_empty(batch, -(-length // _library().chunk_tokens()), n, d_inner) if keep_states else None
    _run_split(_kernel("scan_fwd", u.dtype), _work_items(batch, d_inner),
               lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(delta_bias), _ptr(D), _ptr(z),
                          _ptr(y), _ptr(states), int(softplus), d_inner, length, n))
    return y, states


def scan_backward(u, delta, A, Bt, Ct, D, z, delta_bias, softplus: bool, states, dy, want_y: bool = False):
    """Gradients of `scan_forward` (same contiguous inputs, its states) for dy: (du, ddelta, dA, dB, dC, dD,
    dz, ddelta_bias, y), each None where its input is None; y = the forward's output again when want_y."""
    dy = dy.contiguous()
    batch, length, d_inner = u.shape
    n = A.shape[1]
    items = _work_items(batch, d_inner)
    parts = max(1, min(torch.get_num_threads(), items))
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else None
    y = torch.empty_like(u) if want_y else None
    dA = u.new_empty(batch, d_inner, n)
    dD, dbias = u.new_empty(batch, d_inner), u.new_empty(batch, d_inner)
    # dB and dC sum over channels: one zeroed buffer per thread, added up at the end
    dB = u.new_zeros(parts, batch, length, n)
    dC = u.new_zeros(parts, batch, length, n)
    _run_split(_kernel("scan_bwd", u.dtype), items,
               lambda p: (_ptr(u), _ptr(delta), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(delta_bias), _ptr(D), _ptr(z),
                          _ptr(dy), _ptr(states), int(softplus), _ptr(y), _ptr(du), _ptr(ddelta), _ptr(dz), _ptr(dA),
                          _ptr(dB[p]), _ptr(dC[p]), _ptr(dD), _ptr(dbias), d_inner, length, n), parts)
    return (du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dD.sum(0) if D is not None else None, dz,
            dbias.sum(0) if delta_bias is not None else None, y)


class _TokenScan(torch.autograd.Function):
    """`scan_forward` / `scan_backward` for autograd. Saved for backward: the inputs and the chunk states."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, D, z, delta_bias, softplus):
        inputs = tuple(map(_contiguous, (u, delta, A, Bt, Ct, D, z, delta_bias)))
        y, states = scan_forward(*inputs, softplus, keep_states=any(ctx.needs_input_grad))  # (grad mode is off here)
        ctx.save_for_backward(*inputs, states)
        ctx.softplus = bool(softplus)
        return y

    @staticmethod
    def backward(ctx, dy):
        *inputs, states = ctx.saved_tensors
        return (*scan_backward(*inputs, ctx.softplus, states, dy)[:-1], None)


def selective_scan_tokens(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """`mamba.selective_scan_reference` token-major: u, delta, z and the result (batch, L, d_inner); B, C
    (batch, L, d_state); on the compiled kernels (softplus, D skip and silu(z) gate included), differentiable
    in every input. Call `available()` first."""
    return _TokenScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_compiled(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """Same contract and layout as `mamba.selective_scan_reference` (u, delta, z: (batch, d_inner, L); B, C:
    (batch, d_state, L)), on the compiled kernels."""
    u_t, delta_t, B_t, C_t, z_t = (None if t is None else t.transpose(1, 2) for t in (u, delta, B, C, z))
    return selective_scan_tokens(u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, delta_softplus).transpose(1, 2)


def conv_forward(x, weight, bias):
    """silu(causal depthwise conv) of token-major x (batch, L, d); weight (d, 1, k) as nn.Conv1d's; bias (d) or
    None."""
    x, bias = x.contiguous(), _contiguous(bias)
    w = weight[:, 0].t().contiguous()  # (k, d)
    _check(x, w, bias)
    batch, length, d = x.shape
    out = torch.empty_like(x)
    _run_split(_kernel("conv_fwd", x.dtype), batch,
               lambda p: (_ptr(x), _ptr(w), _ptr(bias), _ptr(out), d, length, w.shape[0]))
    return out


def conv_backward(x, weight, bias, dout):
    """Gradients of `conv_forward` for dout: (dx, dweight, dbias (None without bias)); the conv is redone here."""
    x, bias, dout = x.contiguous(), _contiguous(bias), dout.contiguous()
    w = weight[:, 0].t().contiguous()
    batch, length, d = x.shape
    k = w.shape[0]
    dx = torch.empty_like(x)
    dw, dbias = x.new_empty(batch, k, d), x.new_empty(batch, d)
    _run_split(_kernel("conv_bwd", x.dtype), batch,
               lambda p: (_ptr(x), _ptr(w), _ptr(bias), _ptr(dout), _ptr(dx), _ptr(dw), _ptr(dbias), d, length, k))
    return dx, dw.sum(0).t().unsqueeze(1), dbias.sum(0) if bias is not None else None
