"""Every file input is bounded and typed: FIFOs, devices, lying headers, 16-bit pixels, alias bombs, loops."""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats import digits_sources, images, paths
from dogs_vs_cats.config import ConfigError, load_params
from runtime.errors import PipelineError
from tests.conftest import REPO, call_stage, inside
from tests.model.test_digits import idx_bytes, small_split
from tools import predict, report, scenarios

shutil_usage = namedtuple("usage", "total used free", defaults=[10**6])

# ---- digits.data.source: files ----


def test_uncompressed_idx_files_under_any_mirrors_name_are_read(tmp_path: Path) -> None:
    train, test = small_split(30, 1), small_split(10, 2)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images.idx3-ubyte").write_bytes(idx_bytes(train.x))  # the dotted name, not gzipped
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(train.y))  # the original name, not gzipped
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(idx_bytes(test.x))  # named .gz, but not gzipped: fine
    (folder / "t10k-labels.idx1-ubyte.gz").write_bytes(__import__("gzip").compress(idx_bytes(test.y)))
    got_train, got_test = digits_sources.from_files(folder)
    assert np.array_equal(got_train.x, train.x) and np.array_equal(got_train.y, train.y)
    assert np.array_equal(got_test.x, test.x) and np.array_equal(got_test.y, test.y)


def test_every_missing_idx_file_is_named_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(small_split(3, 1).x))
    with pytest.raises(PipelineError) as error:
        digits_sources.from_files(folder)
    message = str(error.value)
    assert "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    assert "train-images" not in message.split("(")[0]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "mnist.npz"])
def test_a_fifo_device_or_folder_is_one_line_not_a_hang(tmp_path: Path, kind: str, name: str) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    if name.endswith(".gz"):
        for other in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (folder / other).write_bytes(b"")
    path = folder / name
    {"fifo": lambda: os.mkfifo(path), "device": lambda: path.symlink_to("/dev/zero"), "folder": path.mkdir}[kind]()
    with pytest.raises(PipelineError, match={"fifo": "a FIFO", "device": "a device", "folder": "a folder"}[kind]):
        digits_sources.from_files(folder)


def _npz(path: Path, members: dict[str, bytes], encrypted: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    if encrypted:  # set the "encrypted" flag bit in every local and central header, as an encrypting tool does
        data = bytearray(path.read_bytes())
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            start = data.find(signature)
            while start != -1:
                data[start + offset] |= 0x1
                start = data.find(signature, start + 4)
        path.write_bytes(bytes(data))
    return path


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


def _lying_npy(shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npy header declaring ``shape`` of uint8, then ``data``: a few bytes can declare gigabytes."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def _keras_members(**replace: bytes) -> dict[str, bytes]:
    train, test = small_split(30, 1), small_split(10, 2)
    arrays = {"x_train": train.x, "y_train": train.y, "x_test": test.x, "y_test": test.y}
    return {f"{key}.npy": replace.get(key, _npy(value)) for key, value in arrays.items()}


@pytest.mark.parametrize(
    ("replace", "says"),
    [
        ({"x_train": _lying_npy((4_000_000, 28, 28), bytes(3_000_000))}, "expected up to 1,000,000 uint8 28x28"),
        ({"x_train": _lying_npy((900_000, 28, 28), bytes(1000))}, "holds 1000 bytes of data, its header says"),
        ({"x_train": b"\x93NUMPY garbage that is no header" * 1000}, "not a NumPy array"),
        ({"x_train": b"PK not npy at all"}, "not a NumPy array"),
        ({"y_train": _npy(np.array([object()] * 30))}, "holds object"),
        ({"y_train": _npy(np.zeros(30, dtype=np.float32))}, "holds float32"),
    ],
)
def test_an_npz_member_is_checked_before_it_is_read(tmp_path: Path, replace: dict, says: str) -> None:
    (tmp_path / "mnist").mkdir()
    _npz(tmp_path / "mnist/mnist.npz", _keras_members(**replace))
    with pytest.raises(PipelineError, match=says) as error:
        digits_sources.from_files(tmp_path / "mnist")
    assert "\n" not in str(error.value)


def test_an_encrypted_npz_member_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    _npz(tmp_path / "mnist/mnist.npz", _keras_members(), encrypted=True)
    with pytest.raises(PipelineError, match=r"not a readable \.npz \(.*encrypted"):
        digits_sources.from_files(tmp_path / "mnist")


def test_a_file_where_the_digits_folder_should_be_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "mnist").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"mnist: a file, not a folder; put the dataset's files there"):
        digits_sources.from_files(tmp_path / "mnist")
    with pytest.raises(PipelineError, match=r"other: not found; put the dataset's files there"):
        digits_sources.from_files(tmp_path / "other")


# ---- 16-bit and float images ----


def _png16(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(out, format="PNG")
    return out.getvalue()


def test_a_16_bit_digit_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    digit = np.zeros((28, 28), dtype=np.uint16)
    digit[6:22, 12:16] = 40_000  # a "1", at 61 % of 16-bit white
    image = images.read_image(_png16(digit))
    pixels, done = predict.digits_pixels(image)
    assert done == "16-bit (I;16) scaled to 8-bit grayscale"
    expected = np.round(digit * (255 / 65535))
    np.testing.assert_array_equal(pixels[..., 0], expected)  # 156 on 0, not 255 everywhere it is not 0
    assert pixels.max() == 156


def test_an_8_bit_grayscale_photo_is_not_said_to_be_converted() -> None:
    out = io.BytesIO()
    Image.fromarray(np.full((28, 28), 7, dtype=np.uint8)).save(out, format="PNG")
    assert predict.digits_pixels(images.read_image(out.getvalue()))[1] == "as is"


def test_sample_keeps_a_16_bit_photo_as_its_8_bit_values() -> None:
    gradient = np.tile(np.linspace(0, 65535, 64), (48, 1))
    photo = images.to_rgb_jpeg(_png16(gradient))
    with Image.open(io.BytesIO(photo.data)) as jpeg:
        decoded = np.asarray(jpeg.convert("L"), dtype=np.float64)
    assert np.abs(decoded - gradient * (255 / 65535)).mean() < 2  # JPEG's loss only; clipping gave ~255


def _tiff(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="TIFF")
    return out.getvalue()


def test_a_float_image_in_0_to_1_is_scaled_and_one_outside_is_refused() -> None:
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (8, 1))
    rgb = np.asarray(images.read_image(_tiff(ramp)))
    np.testing.assert_array_equal(rgb[..., 0], np.round(ramp * 255))
    for bad in (ramp * 3, ramp - 0.5, np.full((8, 8), np.nan, dtype=np.float32)):
        with pytest.raises(images.BadImage, match="unsupported_range"):
            images.read_image(_tiff(bad.astype(np.float32)))


# ---- params.yaml and scenarios ----


def test_an_alias_bomb_in_params_is_refused_quickly(tmp_path: Path) -> None:
    def bomb(levels: int) -> str:  # one value of 10**levels strings, written in a few hundred bytes
        value = "&a0 [x, x, x, x, x, x, x, x, x, x]"
        for i in range(1, levels + 1):
            value = f"&a{i} [{value}, {', '.join([f'*a{i - 1}'] * 9)}]"
        return value

    params = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("seed: 42", f"seed: {bomb(8)}", 1))
    assert len((tmp_path / "params.yaml").read_bytes()) < 8000
    with pytest.raises(ConfigError, match="holds more than 100,000 values once its YAML aliases"):
        load_params(tmp_path / "params.yaml")
    # A smaller one within the bound reaches the key's check, which shows only a few of its values.
    (tmp_path / "params.yaml").write_text(params.replace("seed: 42", f"seed: {bomb(3)}", 1))
    with pytest.raises(ConfigError, match=r"seed is \[\[\[\.\.\.\], \[\.\.\.\]") as error:
        load_params(tmp_path / "params.yaml")
    assert len(str(error.value)) < 200


@pytest.mark.parametrize(("digits", "says"), [(5000, "cannot read a value"), (4000, "number of about 4,000 digits")])
def test_a_huge_integer_is_one_short_line(tmp_path: Path, digits: int, says: str) -> None:
    params = (REPO / "params.yaml").read_text().replace("seed: 42", "seed: " + "9" * digits, 1)
    (tmp_path / "params.yaml").write_text(params)
    with pytest.raises(ConfigError, match=says) as error:
        load_params(tmp_path / "params.yaml")
    assert len(str(error.value)) < 200


def test_a_scenario_that_extends_itself_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenarios, "CONFIGS_DIR", tmp_path)
    (tmp_path / "loop.yaml").write_text("extends: other\nseed: 1\n")
    (tmp_path / "other.yaml").write_text("extends: loop\n")
    (tmp_path / "list.yaml").write_text("- seed\n")
    with pytest.raises(PipelineError, match=r"scenario 'loop' extends itself \(loop -> other -> loop\)"):
        scenarios.load("loop")
    with pytest.raises(PipelineError, match=r"must map dotted params\.yaml keys"):
        scenarios.load("list")


@pytest.mark.parametrize("name", ["../params", "sub/tiny", "tiny.yaml", ".tiny", "/etc/passwd"])
def test_a_scenario_is_a_plain_name_of_a_file_in_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    configs = tmp_path / "configs"
    monkeypatch.setattr(scenarios, "CONFIGS_DIR", configs)
    for path in (configs / "tiny.yaml", configs / "sub/tiny.yaml", configs / "tiny.yaml.yaml", configs / ".tiny.yaml"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("seed: 1\n")
    (tmp_path / "params.yaml").write_text("seed: 2\n")  # beside configs/, not in it
    with pytest.raises(PipelineError, match=r"no scenario .* use one of tiny$"):
        scenarios.load(name)
    (configs / "child.yaml").write_text(f"extends: {json.dumps(name)}\n")  # extends: goes through the same check
    with pytest.raises(PipelineError, match="no scenario"):
        scenarios.load("child")


def test_two_scenario_names_are_a_usage_line(tmp_path: Path) -> None:
    ran = call_stage("scenarios", tmp_path, ("tiny", "demo"))
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.splitlines()[0].startswith("usage: python -m tools.scenarios")
    assert len(ran.stderr.splitlines()) == 2 and "Traceback" not in ran.stderr  # usage, and what was wrong
    assert call_stage("scenarios", tmp_path, ("tiny",)).stdout.startswith("-S ")


# ---- tools given files that are not what they need ----


@pytest.mark.parametrize("tool", ["predict", "anatomy"])
def test_a_model_path_that_is_no_model_is_one_line(workdir: Path, tool: str) -> None:
    (workdir / "truncated.keras").write_bytes(b"PK\x03\x04" + bytes(100))
    (workdir / "folder.keras").mkdir()
    photo = workdir / "cat.png"
    Image.new("RGB", (8, 8)).save(photo)
    for model, says in [
        (REPO / "README.md", "not a .keras model file"),
        (workdir / "truncated.keras", "not a .keras model file"),
        (workdir / "folder.keras", "a folder, not a file"),
        (workdir / "missing.keras", "not found"),
    ]:
        args = [str(photo), "--model", str(model)] if tool == "predict" else [str(model)]
        result = call_stage(tool, workdir, args=tuple(args))
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {model}: {says}")


def test_predict_base_without_imagenet_is_one_line(workdir: Path) -> None:
    result = call_stage("predict", workdir, args=("cat.png", "--base", "resnet50"))
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "error: --base chooses the networks of --imagenet; add --imagenet, or leave --base out"
    )


def _git(*args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("evaluate_json", "says"),
    [
        ('{"baseline": {"accuracy": "high"}}', "metrics/evaluate.json: baseline.accuracy: is 'high', not a number"),
        ('{"head": {"accuracy_ci95": {"low": 0.5}}}', "head.accuracy_ci95 has no low and high"),
        ('{"head": [1, 2]}', "head is [1, 2], not a table of metrics"),
        ("[]", "metrics/evaluate.json: not a JSON object"),
        ('{"bad": ', "metrics/evaluate.json: not readable JSON"),
    ],
)
def test_report_on_metrics_of_the_wrong_shape_is_one_line(tmp_path: Path, evaluate_json: str, says: str) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(evaluate_json)
    with inside(tmp_path):
        _git("init", "-q", "-b", "main")
        _git("commit", "-q", "--allow-empty", "-m", "base")
        result = call_stage("report", tmp_path, args=("--base", "main"))
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 1 and line.startswith("error: metrics/evaluate.json: ") and says in line
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    ("base_csv", "says"),
    [
        (b"file,label,predicted\n\xff\xfe,cat,dog\n", "not UTF-8 text"),
        (b"file,label\nx.jpg,cat\n", "has no column predicted"),
    ],
)
def test_report_on_a_base_whose_predictions_are_not_ours_is_one_line(
    tmp_path: Path, base_csv: bytes, says: str
) -> None:
    path = tmp_path / "metrics/evaluate/predictions/baseline.csv"
    path.parent.mkdir(parents=True)
    with inside(tmp_path):
        _git("init", "-q", "-b", "main")
        path.write_bytes(base_csv)
        _git("add", "-A")
        _git("commit", "-q", "-m", "base")
        path.write_text("file,label,predicted\nx.jpg,cat,cat\n")
        with pytest.raises(PipelineError, match=f"main:metrics/evaluate/predictions/baseline.csv: {says}"):
            report.change_against("baseline", "main")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_report_on_metrics_that_are_no_file_is_one_line_not_a_hang(tmp_path: Path, kind: str) -> None:
    # A FIFO there hung the report for ever (dvc metrics diff opened it); a folder passed for "no metrics yet".
    (tmp_path / "metrics").mkdir()
    target = tmp_path / "metrics/evaluate.json"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with inside(tmp_path):
        _git("init", "-q", "-b", "main")
        _git("commit", "-q", "--allow-empty", "-m", "base")
        result = call_stage("report", tmp_path, args=("--base", "main"))
    what = "a FIFO" if kind == "fifo" else "a folder"
    assert result.returncode == 1
    assert result.stderr == f"error: metrics/evaluate.json: {what}, not a file; run dvc repro\n"
    assert not (tmp_path / "report.md").exists()


def test_report_against_a_revision_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    with inside(tmp_path):
        _git("init", "-q", "-b", "main")
        _git("commit", "-q", "--allow-empty", "-m", "base")
        result = call_stage("report", tmp_path, args=("--base", "no-such-branch"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --base no-such-branch: no such git revision here; name a branch, tag or commit (git fetch it)"
    )
    assert not (tmp_path / "report.md").exists()


def test_no_room_for_the_decoded_images_is_one_line_before_any_training(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dogs_vs_cats import datasets

    monkeypatch.setattr(datasets, "usable_memory", lambda: None)  # no limit known: on disk
    monkeypatch.setattr(datasets.shutil, "disk_usage", lambda path: shutil_usage(total=10**9, used=10**9 - 10**6))
    with pytest.raises(PipelineError, match=r"train: no space for its 0\.9 GiB of decoded images, neither in memory"):
        datasets._cache_file("train", 10**9)
    assert list((workdir / paths.CACHE_DIR).iterdir()) == []  # no scratch folder was made
