"""One structure for a view branch's features, on disk, in memory and in a model batch.

Branch S is the resized view, branch D the cropped view. Each carries F_Latent, the N_LEVELS F_MS maps
(a level is None when it is not selected) and the uint8 pixel copy TCAB reads; any part may be absent.
The same structure holds numpy arrays (a video read from the cache), tensors (a loaded table, a batch)
or shapes; `map` applies one function to every part present, so callers never special-case levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

BRANCHES = ("S", "D")
N_LEVELS = 4  # F_MS: the outputs of the UNet's four up blocks


@dataclass
class BranchFeatures:
    latent: Any = None  # F_Latent (..., 4, h, w)
    ms: tuple = field(default_factory=lambda: (None,) * N_LEVELS)  # F_MS level l: (..., C_l, g_l, g_l) or None
    pixels: Any = None  # (..., 3, P, P) uint8

    def map(self, fn: Callable) -> "BranchFeatures":
        """The same structure with `fn` applied to every part present."""
        return BranchFeatures(latent=None if self.latent is None else fn(self.latent),
                              ms=tuple(None if m is None else fn(m) for m in self.ms),
                              pixels=None if self.pixels is None else fn(self.pixels))

    @classmethod
    def stack(cls, items: list["BranchFeatures"], stack_fn: Callable) -> "BranchFeatures":
        """Part-wise `stack_fn([part of each item])` (e.g. np.stack, torch.cat)."""
        first = items[0]

        def join(get):
            return None if get(first) is None else stack_fn([get(it) for it in items])

        return cls(latent=join(lambda it: it.latent), pixels=join(lambda it: it.pixels),
                   ms=tuple(join(lambda it, lv=lv: it.ms[lv]) for lv in range(len(first.ms))))

    def parts(self) -> Iterator:
        """Every part present: latent, the selected levels in order, pixels."""
        yield from (x for x in (self.latent, *self.ms, self.pixels) if x is not None)


def map_branches(branches: dict[str, BranchFeatures], fn: Callable) -> dict[str, BranchFeatures]:
    """`fn` applied to every part of every branch."""
    return {b: v.map(fn) for b, v in branches.items()}
