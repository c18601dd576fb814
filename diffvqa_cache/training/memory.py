"""The machine's memory as stage two sees it: the default feature budget and this process's peak.

The budget (`FitConfig.memory_gb`) bounds the feature data a fit holds: the in-memory table, or the
streamed path's prefetched batches. Its default is a share of the memory available when the fit starts
(`MemAvailable`: free memory plus the page cache the kernel can drop), so a fit leaves room for the
model, the runtime and the page cache that makes streaming fast.
"""

from __future__ import annotations

import os
import resource

DEFAULT_SHARE = 0.7  # of MemAvailable; the rest is for the model, torch's runtime and the page cache
FALLBACK_GB = 8.0  # where the available memory cannot be read


def _proc_kib(path: str, field: str) -> int | None:
    """Bytes of a "<field>: N kB" line of a /proc file (Linux), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int | None:
    """Memory available to a new process: Linux `MemAvailable`, else half the physical memory, else None."""
    avail = _proc_kib("/proc/meminfo", "MemAvailable")
    if avail is not None:
        return avail
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return None


def default_budget_gb() -> float:
    """`DEFAULT_SHARE` of the available memory in GB (1e9 bytes), or `FALLBACK_GB`."""
    avail = available_bytes()
    return round(DEFAULT_SHARE * avail / 1e9, 2) if avail else FALLBACK_GB


def feature_budget_gb(memory_gb: float | None, name: str = "memory_gb") -> float:
    """The feature budget `memory_gb` (refused unless > 0, as `name`), or the default when it is None."""
    if memory_gb is None:
        return default_budget_gb()
    if not memory_gb > 0:
        from diffvqa_cache.errors import UserInputError

        raise UserInputError(f"{name} must be > 0 (or unset for the default), got {memory_gb:g}")
    return memory_gb


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux VmHWM, which `reset_peak_rss` can reset; else ru_maxrss)."""
    peak = _proc_kib("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Start measuring the peak afresh (Linux >= 4.0); False where the peak cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    """Resident memory of this process now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
