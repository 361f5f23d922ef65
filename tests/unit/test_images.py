"""Member names and decoding: every kept image is an upright 3-channel JPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats.images import (
    SKIP_REASONS,
    BadImage,
    _tensorflow_decoding,
    check_training_decodes,
    is_unsafe,
    parse_member,
    read_image,
    to_rgb_jpeg,
)
from tests.conftest import damaged_jpeg, image_bytes, truncated_jpeg


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        ("train/cat.123.jpg", ("cat", "123")),
        ("train/dog.0.jpg", ("dog", "0")),
        ("dog.7.JPG", ("dog", "7")),
        ("PetImages/Cat/5.jpg", ("cat", "5")),
        ("kagglecatsanddogs/PetImages/Dog/12499.jpg", ("dog", "12499")),
        ("train/", None),
        ("sampleSubmission.csv", None),
        ("PetImages/Cat/Thumbs.db", None),
        ("train/bird.1.jpg", None),
        ("train/concat.1.jpg", None),
    ],
)
def test_parse_member(member: str, expected: tuple[str, str] | None) -> None:
    assert parse_member(member) == expected


@pytest.mark.parametrize(
    ("member", "unsafe"),
    [
        ("../cat.1.jpg", True),
        ("/etc/cat.1.jpg", True),
        ("train/../../cat.1.jpg", True),
        ("C:/cat.1.jpg", True),
        ("train/cat.1.jpg", False),
        ("train/cat..1.jpg", False),
    ],
)
def test_is_unsafe(member: str, unsafe: bool) -> None:
    assert is_unsafe(member) is unsafe


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_plain_rgb_jpeg_is_kept_byte_for_byte() -> None:
    data = image_bytes()
    photo = to_rgb_jpeg(data)
    assert photo.data == data
    assert (photo.width, photo.height) == (40, 30)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L")]
)
def test_other_modes_become_rgb_jpeg(fmt: str, mode: str) -> None:
    photo = to_rgb_jpeg(image_bytes(fmt, mode))
    image = _decode(photo.data)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photo = to_rgb_jpeg(image_bytes(size=(40, 30), exif=exif))
    assert (photo.width, photo.height) == (30, 40)
    assert _decode(photo.data).size == (30, 40)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html>not found</html>", "not_image"),
        (image_bytes()[:200], "truncated"),
        (image_bytes()[:2] + b"\x00" * 300, "not_image"),
    ],
)
def test_bad_members_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage) as error:
        to_rgb_jpeg(data)
    assert error.value.reason == reason


def test_a_jpeg_pillow_reads_but_training_cannot_is_refused_in_silence(capfd: pytest.CaptureFixture) -> None:
    data = damaged_jpeg()
    capfd.readouterr()  # what making it printed
    read_image(data)  # Pillow alone goes on past the damage
    with pytest.raises(BadImage) as error:
        to_rgb_jpeg(data)
    assert error.value.reason == "undecodable_by_tensorflow"
    # TensorFlow's libjpeg prints "Corrupt JPEG data: ..." on stderr, naming no file; the caller names it.
    assert capfd.readouterr() == ("", "")


def test_a_jpeg_whose_rows_the_decoder_made_up_is_refused_in_silence(capfd: pytest.CaptureFixture) -> None:
    data = truncated_jpeg()
    capfd.readouterr()
    read_image(data)  # Pillow fills the missing rows without a word
    with pytest.raises(BadImage) as error:
        check_training_decodes(data)
    assert error.value.reason == "undecodable_by_tensorflow"
    assert capfd.readouterr() == ("", "")


def test_libjpeg_warnings_that_lose_no_pixel_keep_the_photo_and_silence_every_later_decode(
    capfd: pytest.CaptureFixture,
) -> None:
    good = image_bytes()
    padded = good[:-2] + b"\x00" * 99 + good[-2:]  # like many Kaggle photos: bytes between the scan and the end
    version = good.index(b"JFIF\x00") + 5
    odd_jfif = good[:version] + b"\x09\x09" + good[version + 2 :]  # "Warning: unknown JFIF revision number 9.09"
    tables = good.index(b"\xff\xdb")
    junk_inside = good[:tables] + b"\x07" * 5 + good[tables:]  # "5 extraneous bytes before marker 0xdb"
    assert check_training_decodes(good) == []
    for data in (padded, odd_jfif, junk_inside):
        assert check_training_decodes(data)  # libjpeg said something, and nothing was lost: kept
    # Training, evaluate and every stage after sample would print those lines, naming no file: sample writes
    # the photo without what libjpeg skipped, the same pixels, or re-encodes it where no such cut is known.
    cut = to_rgb_jpeg(padded).data
    assert len(good) <= len(cut) < len(padded) and check_training_decodes(cut) == []
    assert np.array_equal(_tensorflow_decoding(cut)[0], _tensorflow_decoding(good)[0])  # not re-encoded
    assert to_rgb_jpeg(odd_jfif).data == good
    reencoded = to_rgb_jpeg(junk_inside)
    assert reencoded.data not in (good, junk_inside) and check_training_decodes(reencoded.data) == []
    assert (reencoded.width, reencoded.height) == (40, 30)
    assert capfd.readouterr().err == ""  # libjpeg's lines name no file: never printed


def test_a_reason_outside_the_one_list_is_a_bug() -> None:
    assert len(set(SKIP_REASONS)) == len(SKIP_REASONS)
    with pytest.raises(ValueError, match=r"'unreadable' is not one of images\.SKIP_REASONS"):
        BadImage("unreadable")
