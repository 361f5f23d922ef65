"""Reading photos from an archive: which members are cats or dogs, and which ones decode."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.tf_log import captured_stderr

EXIF_ORIENTATION = 0x0112
# libjpeg's warnings (jerror.h), printed on stderr while it decodes, naming no file. Where the data ends early or
# is damaged it fills the rows it lost with gray and says so; junk after the last scan (many Kaggle photos), an
# odd JFIF version or SOS parameters lose nothing. The caller names the file; the lines themselves are dropped.
LOST_ROWS = re.compile(r"^(Corrupt JPEG data: (?!\d+ extraneous bytes)|Premature end of JPEG)")
EXTRANEOUS_BEFORE_END = re.compile(r"^Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9$")
TENSORFLOW_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's prefix; libjpeg's lines have none
JPEG_QUALITY = 95  # re-encoded images (PNG, CMYK, grayscale, rotated) stay visually lossless
# What a photo can be. Kaggle's largest is about 0.5 MB and 0.3 megapixels; a 50 MP phone photo is about
# 20 MB. Anything beyond is refused unread or undecoded: a small file can declare a huge size.
MAX_FILE_BYTES = 50 * 2**20
MAX_PIXELS = 64_000_000

# Kaggle: train/cat.123.jpg. Microsoft's PetImages: PetImages/Cat/123.jpg.
_KAGGLE = re.compile(r"(?:^|/)(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)
_PETIMAGES = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/(\d+)\.jpe?g$", re.IGNORECASE)


@dataclass(frozen=True)
class Photo:
    """A member that decoded: the bytes to write, and its size after EXIF rotation."""

    data: bytes
    width: int
    height: int


# Why an image is left out: the keys of metrics/data.json's "skipped", every one always there, and the words
# of predict's error lines. BadImage's reasons, and sample's own (unsafe_path, name_clash).
SKIP_REASONS = (
    "unsafe_path",
    "not_a_file",
    "too_large",
    "corrupt_member",
    "encrypted",
    "unsupported_compression",
    "empty",
    "not_image",
    "truncated",
    "undecodable",
    "unsupported_range",
    "undecodable_by_tensorflow",
    "name_clash",
)


def known_reason(reason: str) -> str:
    """``reason``, if it is one of SKIP_REASONS; any other is a bug (metrics/data.json would not count it)."""
    if reason not in SKIP_REASONS:
        raise ValueError(f"{reason!r} is not one of images.SKIP_REASONS")
    return reason


class BadImage(Exception):
    """A member that cannot be used; ``reason``, one of SKIP_REASONS, is the key counted in ``metrics/data.json``."""

    def __init__(self, reason: str) -> None:
        super().__init__(known_reason(reason))
        self.reason = reason


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int = MAX_FILE_BYTES) -> bytes:
    """A zip member's bytes, at most ``limit`` of them; raise BadImage for a member that is too large or
    cannot be decompressed. Both concern one member, never the archive."""
    if info.file_size > limit:  # the declared size, checked before reading anything
        raise BadImage("too_large")
    try:
        with archive.open(info) as member:
            data = member.read(limit + 1)  # the declared size may lie: read no more than the limit
    except (zipfile.BadZipFile, zlib.error, EOFError):  # a bad CRC, a damaged stream
        raise BadImage("corrupt_member") from None
    except NotImplementedError:  # e.g. Deflate64, which zipfile cannot decompress (a RuntimeError: first)
        raise BadImage("unsupported_compression") from None
    except RuntimeError:  # zipfile's word for "encrypted, password required"
        raise BadImage("encrypted") from None
    if len(data) > limit:
        raise BadImage("too_large")
    return data


def read_file(path: os.PathLike | str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``; raise BadImage for a FIFO, a device, a folder or a file over
    ``limit``. Opened without blocking, so a FIFO is refused instead of waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not_a_file")
        if info.st_size > limit:
            raise BadImage("too_large")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BadImage("too_large")
    return data


def is_unsafe(member: str) -> bool:
    """True for a member path that would escape a folder it is extracted into."""
    path = PurePosixPath(member.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(re.match(r"^[A-Za-z]:", member))


def parse_member(member: str) -> tuple[str, str] | None:
    """``(label, number)`` of a Kaggle- or PetImages-style member name, or None for anything else."""
    name = member.replace("\\", "/")
    match = _KAGGLE.search(name) or _PETIMAGES.search(name)
    if match is None:
        return None
    return match.group(1).lower(), match.group(2)


def output_name(label: str, number: str) -> str:
    """The sampled file's name, in Kaggle's style whatever the source."""
    return f"{label}.{number}.jpg"


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, transparency on white, as 3-channel RGB.

    ``info["source_mode"]`` keeps the mode it was decoded in (``L``, ``I;16``...), to say what was converted.
    """
    upright = eight_bit(ImageOps.exif_transpose(image))
    if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
        upright = Image.alpha_composite(Image.new("RGBA", upright.size, "white"), upright.convert("RGBA"))
    rgb = upright.convert("RGB")
    rgb.info["source_mode"] = image.mode
    rgb.info["plain_jpeg"] = is_plain_jpeg(image)
    return rgb


def is_plain_jpeg(image: Image.Image) -> bool:
    """An upright RGB JPEG: ``sample`` keeps such a file byte for byte, and training decodes it as it is."""
    return image.format == "JPEG" and image.mode == "RGB" and image.getexif().get(EXIF_ORIENTATION, 1) == 1


def is_high_depth(mode: str) -> bool:
    """A Pillow mode of more than 8 bits a pixel: 16- or 32-bit integers (``I;16*``, ``I``) or floats (``F``)."""
    return mode.startswith("I") or mode == "F"


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grayscale as 8-bit ``L``, scaled by the range the mode holds: Pillow's own
    conversion clips them at 255, which turns a 16-bit image near white and a float one black.

    ``I;16*`` and ``I`` (how Pillow opens 16-bit PNGs and TIFFs) hold 0 to 65,535; ``F`` holds 0 to 1. Values
    outside that range have no one meaning: such an image is a BadImage (``unsupported_range``).
    """
    if not is_high_depth(image.mode):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0
    if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= top):
        raise BadImage("unsupported_range")
    return Image.fromarray(np.round(pixels * (255 / top)).astype(np.uint8), "L")


def read_image(data: bytes) -> Image.Image:
    """Decode ``data`` fully to upright RGB; raise BadImage if it cannot be used."""
    with _decoded(data) as image:
        return upright_rgb(image)


def to_rgb_jpeg(data: bytes) -> Photo:
    """Decode ``data`` fully and return it as an upright 3-channel JPEG that training's decoder reads in full
    and in silence; raise BadImage if it cannot be used.

    A plain upright RGB JPEG is kept byte for byte, or with what libjpeg skips cut out (``_silenced``);
    anything else (PNG named .jpg, CMYK, grayscale, alpha, an EXIF rotation, a JPEG libjpeg still warns about)
    is converted and re-encoded. So every sampled file decodes to RGB anywhere, and no later stage's log
    carries a libjpeg line that names no file.
    """
    with _decoded(data) as image:
        kept = _silenced(data, check_training_decodes(data)) if is_plain_jpeg(image) else None
        if kept is not None:
            photo = Photo(kept, image.width, image.height)
        else:
            rgb = upright_rgb(image)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
            photo = Photo(out.getvalue(), rgb.width, rgb.height)
    if photo.data is not data and check_training_decodes(photo.data):  # the bytes training will read
        raise BadImage("undecodable_by_tensorflow")
    return photo


def check_training_decodes(data: bytes) -> list[str]:
    """Raise BadImage (``undecodable_by_tensorflow``) unless ``data`` decodes in full as the training datasets
    decode it: ``keras.utils.image_dataset_from_directory`` calls TensorFlow's decoder on the whole file, 3
    channels, first frame. Pillow goes on past damaged JPEG data that this decoder refuses; and where the
    compressed data ends early (a truncated file with its end marker put back) both decoders fill the missing
    rows with gray, and only libjpeg's warning on stderr tells: such a file is refused too. Returns libjpeg's
    other warnings, which lose no pixel; none is printed."""
    lines = _tensorflow_decoding(data)[1]
    if any(LOST_ROWS.match(line) for line in lines):
        raise BadImage("undecodable_by_tensorflow")
    return lines


def _tensorflow_decoding(data: bytes) -> tuple[np.ndarray, list[str]]:
    """``data``'s pixels as training decodes them, and libjpeg's warnings; TensorFlow's own log lines pass on."""
    import tensorflow as tf  # here, not at the top: reading archives and names needs no TensorFlow

    try:
        with captured_stderr() as lines:
            pixels = tf.image.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError:
        raise BadImage("undecodable_by_tensorflow") from None
    for line in lines:
        if TENSORFLOW_LOG.match(line):
            print(line, file=sys.stderr)  # TensorFlow's own log, at the level the user set
    return pixels, [line for line in lines if not TENSORFLOW_LOG.match(line)]


def _silenced(data: bytes, warned: list[str]) -> bytes | None:
    """``data`` without what libjpeg ``warned`` about, when that decodes to the same pixels in silence: the
    ``N extraneous bytes`` it skips before the end marker (many Kaggle photos), an unknown JFIF version (set to
    1.01). ``data`` itself when nothing was said; None when no such repair holds."""
    if not warned:
        return data
    repaired = data
    for line in warned:
        junk = EXTRANEOUS_BEFORE_END.match(line)
        version = repaired.find(b"JFIF\x00", 0, 32)
        if junk and repaired.endswith(b"\xff\xd9") and 0 < int(junk.group(1)) < len(repaired) - 4:
            repaired = repaired[: -2 - int(junk.group(1))] + b"\xff\xd9"
        elif line.startswith("Warning: unknown JFIF revision number") and version >= 0:
            repaired = repaired[: version + 5] + b"\x01\x01" + repaired[version + 7 :]
        else:
            return None
    try:
        pixels, lines = _tensorflow_decoding(repaired)
    except BadImage:
        return None
    return repaired if not lines and np.array_equal(pixels, _tensorflow_decoding(data)[0]) else None


@contextlib.contextmanager
def _decoded(data: bytes) -> Iterator[Image.Image]:
    """Open and fully decode ``data``; every way it can fail becomes a BadImage with a reason."""
    if not data:
        raise BadImage("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PetImages has many files with corrupt EXIF that decode fine
            with Image.open(io.BytesIO(data)) as image:
                # Pillow's own bomb limit is about 179 MP; a photo is far smaller, so refuse before decoding.
                if image.width * image.height > MAX_PIXELS:
                    raise BadImage("too_large")
                image.load()
                yield image
    except UnidentifiedImageError:
        raise BadImage("not_image") from None
    except Image.DecompressionBombError:
        raise BadImage("too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImage("truncated" if "truncated" in str(error).lower() else "undecodable") from None
