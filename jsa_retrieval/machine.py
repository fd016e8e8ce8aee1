"""What a timing depends on: the cores this process may use, and the machine it ran on."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Cores, torch threads, device, load average at the start and library versions, recorded beside every
    timing: numbers taken under another job's load read differently."""
    import numpy as np
    import torch

    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.startswith("cuda") and torch.cuda.is_available():
        chosen = f"{chosen} ({torch.cuda.get_device_name(torch.device(chosen))})"
    info = {"cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "torch_threads": torch.get_num_threads(),
            "device": chosen,
            "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "torch_version": torch.__version__, "numpy_version": np.__version__,
            "python_version": platform.python_version(), "platform": platform.platform()}
    if "faiss" in sys.modules:
        info["faiss_version"] = sys.modules["faiss"].__version__
    return info
