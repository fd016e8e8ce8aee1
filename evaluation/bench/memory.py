"""Peak resident memory of a phase, seen by the kernel (FAISS and HDF5 allocate outside Python)."""
from __future__ import annotations

import resource
from typing import Any


def _status_bytes(key: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak resident set size of this process inside a `with` block, in bytes.

    FAISS and HDF5 allocate outside Python, so tracemalloc would miss them; the kernel's high-water mark
    (VmHWM) sees everything and is reset on entry, so each phase gets its own peak. Where the reset is not
    allowed the lifetime peak (ru_maxrss) is reported instead and `exact` is False.
    """

    def __enter__(self) -> "PeakMemory":
        self.exact = _reset_peak_rss()
        self.start = _status_bytes("VmRSS")
        self.peak = self.start
        return self

    def __exit__(self, *exc: Any) -> None:
        lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = _status_bytes("VmHWM") if self.exact else lifetime
