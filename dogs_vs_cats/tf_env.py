"""TensorFlow's environment, set before TensorFlow is imported: ``stages/`` and ``tools/`` call this first.

Without an NVIDIA driver TensorFlow still tries CUDA and logs ``failed call to cuInit`` at error level,
which reads like a failure in a healthy CPU run's log. There, C++ logging is limited to fatal lines
(``TF_CPP_MIN_LOG_LEVEL=3``; every error a stage can act on reaches Python as an exception). With a
driver the level stays TensorFlow's, so a GPU's real problems show. A value the user set always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present exactly when the kernel driver is loaded


def quiet_cpu_start() -> None:
    """On a machine without an NVIDIA driver, keep TensorFlow's C++ start-up errors out of the log."""
    if not NVIDIA_DRIVER.exists():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
