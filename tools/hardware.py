"""What this machine multiplies in silicon (``python -m tools.bench``): the precisions worth timing here and
which of them a CPU flag or a GPU's compute capability does natively."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

FLOAT32 = "float32"
# The dtype each precision's layers multiply in, as keras.mixed_precision names them.
COMPUTE_DTYPE = {FLOAT32: "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of x86 CPUs that multiply bfloat16 in silicon
GPU_NATIVE = {"mixed_bfloat16": (8, 0), "mixed_float16": (7, 0)}  # the compute capability that has the units


@dataclass(frozen=True)
class Hardware:
    """What this machine multiplies in silicon: its CPU's bfloat16 flags, its first GPU's compute capability."""

    cpu_bf16: tuple[str, ...]
    gpu: tuple[int, int] | None

    def precisions(self) -> list[str]:
        """The policies worth timing here, float32 first: float16 only on a GPU (CPUs emulate it)."""
        return [FLOAT32, "mixed_bfloat16"] + (["mixed_float16"] if self.gpu else [])

    def native(self, precision: str) -> str:
        """What does ``precision`` in silicon here, or "" when nothing does."""
        if precision == FLOAT32:
            return "every CPU and GPU"
        if self.gpu:
            return f"GPU compute capability {self.gpu[0]}.{self.gpu[1]}" if self.gpu >= GPU_NATIVE[precision] else ""
        return f"CPU flag {', '.join(self.cpu_bf16)}" if precision == "mixed_bfloat16" and self.cpu_bf16 else ""


def detect_hardware(cpuinfo: Path = Path("/proc/cpuinfo")) -> Hardware:
    """This machine's ``Hardware``: the bfloat16 flags ``cpuinfo`` lists, the compute capability TensorFlow reports."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux: no flags to read, so bfloat16 is not claimed
        text = ""
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}
    gpus = tf.config.list_physical_devices("GPU")
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
    return Hardware(tuple(f for f in BF16_CPU_FLAGS if f in flags), tuple(capability) if capability else None)
