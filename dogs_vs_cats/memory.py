"""Will it fit? The lecture's memory slide as a check before hours of work.

Training keeps every layer's output for the backward pass: a batch needs the batch size times the sum of the
layers' outputs, on top of the weights, their gradients and the optimizer's values for each trainable weight.
Prediction keeps only a layer's input and output at a time. When the estimate exceeds what this process can
use (the tightest of the cgroup limits it runs under, what the kernel calls available, a GPU's free memory),
the stage stops before it starts, with the lecture's four remedies worked out for the configured model:
a smaller batch, a lower resolution, 16-bit numbers, fewer layers.
"""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import keras

from dogs_vs_cats.costs import layer_costs, precision_of
from runtime.errors import PipelineError

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Values each optimizer keeps per trainable weight, beside the weight and its gradient.
OPTIMIZER_SLOTS = {"RMSprop": 1, "Adam": 2, "AdamW": 2, "SGD": 1}
GB = 1e9
# What TensorFlow itself takes once a fit or a predict starts (its traced graph, thread pools, the allocator's
# slack), beside the model's numbers: the constant term of measured peaks (docs/memory.md).
RUNTIME_BYTES = 100_000_000
# The share of a float32 fit's layer-output memory that a 16-bit one takes: each output in half the bytes.
HALF_PRECISION = 0.5


@dataclass(frozen=True)
class Footprint:
    """Bytes a model needs: ``fixed`` whatever the batch (weights, gradients, optimizer values), ``per_image``
    for each image of a batch (the layer outputs kept)."""

    fixed: int
    per_image: int

    def at(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_image


def footprint(model: keras.Model, *, training: bool, optimizer: str | None = None) -> Footprint:
    """What ``model`` needs to train or to predict, for TensorFlow on a CPU.

    Predicting, one layer runs at a time: its input, its output and the output before its activation (Keras
    applies a layer's ``activation`` as a second op). Training, the backward pass needs every output from the
    first layer that trains onwards, and makes a gradient of the same size for each: twice the outputs. Below
    that layer (a frozen base) nothing is recorded, and the layers run as in prediction. Each output takes the
    bytes of its layer's compute dtype (two under ``mixed_bfloat16``), the input image four.
    Weights are float32 under every precision; each trainable one has a gradient and the optimizer's values
    (RMSprop's one, Adam's two; ``optimizer`` names the class for an uncompiled model, else it is counted as
    the pipeline's RMSprop). Then TensorFlow's
    own working memory. docs/memory.md compares the estimate with measured peaks.
    """
    costs = layer_costs(model)
    outputs = [4 * math.prod(model.input_shape[1:]), *(c.activation_bytes for c in costs)]
    first_trained = next((i for i, c in enumerate(costs) if c.trainable), None) if training else None
    running_part = outputs if first_trained is None else outputs[: first_trained + 1]
    running = max((a + 2 * b for a, b in itertools.pairwise(running_part)), default=outputs[0])
    kept = 0 if first_trained is None else 2 * sum(outputs[first_trained:])
    weights = 4 * sum(c.trainable + c.frozen for c in costs)
    trainable = sum(c.trainable for c in costs) if training else 0
    compiled = getattr(model, "optimizer", None)
    if compiled is not None:
        optimizer = type(getattr(compiled, "inner_optimizer", compiled)).__name__
    name = optimizer or "RMSprop"
    fixed = RUNTIME_BYTES + weights + 4 * (1 + OPTIMIZER_SLOTS.get(name, 2)) * trainable
    return Footprint(fixed, max(running, kept))


@dataclass(frozen=True)
class Usable:
    """How many bytes this process may still take, and which limit says so."""

    bytes: int
    source: str


def usable_memory() -> Usable | None:
    """The tightest of: each memory cgroup above this process (its limit less its use; v2 and v1), the
    kernel's ``MemAvailable``, and on a machine with an NVIDIA GPU the first GPU's free memory. None where none
    of them can be read (not Linux: macOS, Windows), and nothing is checked."""
    available = _meminfo_available()
    limits = [Usable(available, "MemAvailable in /proc/meminfo")] if available is not None else []
    limits += _cgroup_headroom()
    limits += _gpu_free()
    return min(limits, key=lambda usable: usable.bytes, default=None)


def _meminfo_available() -> int | None:
    try:
        lines = (PROC / "meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) > 1 and fields[1].isdigit():
            return int(fields[1]) * 1024
    return None  # a kernel before 3.14


def _cgroup_headroom() -> list[Usable]:
    """Limit less use at every level of this process's memory cgroup, from its own up to the root."""
    try:
        lines = (PROC / "self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if controllers == "":  # v2: one hierarchy, memory.max and memory.current
            root, limit_file, usage_file = CGROUP_ROOT, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            root, limit_file, usage_file = CGROUP_ROOT / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        folder = root / path.lstrip("/")
        while True:
            limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
            if limit is not None and usage is not None and limit < 2**60:  # "max", or v1's page-rounded 2**63
                # Use counts the page cache; its inactive files are given back on demand (as docker stats).
                usage -= _inactive_file(folder / "memory.stat")
                found.append(Usable(max(limit - usage, 0), f"{folder / limit_file} less its use"))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return found


def _inactive_file(stat: Path) -> int:
    """The cgroup's inactive page cache from its ``memory.stat`` (v2 ``inactive_file``, v1 hierarchical
    ``total_inactive_file``), 0 if it cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(maxsplit=1) for line in lines if len(line.split()) == 2)
    for key in ("total_inactive_file", "inactive_file"):
        if values.get(key, "").isdigit():
            return int(values[key])
    return 0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _gpu_free() -> list[Usable]:
    """The first GPU's memory as ``nvidia-smi`` reports it, where TensorFlow trains on it. Its total, not its
    free memory: TensorFlow reserves most of the card when it starts, so by the time of the check the free
    memory is TensorFlow's own, and the estimate counts the model's weights already."""
    if not _tensorflow_sees_a_gpu() or shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [Usable(int(out[0]) * 2**20, "the GPU's memory (nvidia-smi)")] if out and out[0].isdigit() else []


def _tensorflow_sees_a_gpu() -> bool:
    import tensorflow as tf  # keras above runs on it already

    return bool(tf.config.list_logical_devices("GPU"))


def check_fits(
    model: keras.Model,
    batch_size: int,
    batch_key: str,
    what: str,
    *,
    training: bool = True,
    side_key: str | None = None,
    images_kept: int = 0,
) -> None:
    """Stop with one line when ``model`` at ``batch_size`` needs more than this process can use.

    ``images_kept`` counts bytes the run will add besides the model's: decoded images cached in memory as the
    first epoch reads them (``datasets.image_dataset``), which also scale with the image's area.
    The line says the estimate and the limit and works out the remedies: the largest ``batch_key`` that fits,
    the largest ``side_key`` (image models: a layer's output scales with the image's area), 16-bit numbers
    (``train.precision``; layer outputs take half the bytes), or fewer layers.
    """
    need = footprint(model, training=training)
    usable = usable_memory()
    if usable is None or need.at(batch_size) + images_kept <= usable.bytes:
        return
    remedies = []
    largest = (usable.bytes - need.fixed - images_kept) // need.per_image
    if largest >= 1:
        remedies.append(f"{batch_key} {largest} or less")
    if side_key is not None and usable.bytes > need.fixed:
        side = int(model.input_shape[1])
        scaled = batch_size * need.per_image + images_kept  # what grows with the area
        fits = math.isqrt(int(side * side * (usable.bytes - need.fixed) / scaled))
        if fits >= 32:
            remedies.append(f"{side_key} {fits} or less")
    half = need.fixed + images_kept + batch_size * need.per_image * HALF_PRECISION
    if training and precision_of(model) == "float32" and half <= usable.bytes:  # a saved model predicts as trained
        remedies.append("train.precision mixed_bfloat16 (mixed_float16 on a GPU)")
    remedies.append("a model with fewer or smaller layers")
    kept = f", {images_kept / GB:.1f} GB of decoded images kept in memory" if images_kept else ""
    raise PipelineError(
        f"{what} will not fit in memory: about {(need.at(batch_size) + images_kept) / GB:.1f} GB at {batch_key} "
        f"{batch_size} ({batch_size * need.per_image / GB:.1f} GB of layer outputs{kept}, "
        f"{need.fixed / GB:.1f} GB of weights{', gradients, optimizer values' if training else ''} and "
        f"TensorFlow's own) against {usable.bytes / GB:.1f} GB this process can use ({usable.source}); "
        f"use {', or '.join(remedies)}"
    )
