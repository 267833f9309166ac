"""What a run ran on, for results files."""
from __future__ import annotations

import os
import platform
from typing import Any, Dict


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> Dict[str, Any]:
    """CPU model and core count, GPU names, and library versions."""
    import torch

    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": [],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        if hasattr(os, "sched_getaffinity"):
            info["cpu_cores_available"] = len(os.sched_getaffinity(0))
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    import lightning

    info["lightning"] = lightning.__version__
    return info
