"""Image input is hostile input: each bad image is a 400 naming it, and nothing is decoded too large."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
import trio
from PIL import Image as PILImage

from appliance.api import images
from appliance.errors import BadRequest


def encode(img: PILImage.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> PILImage.Image:
    img = PILImage.new("RGB", (width, height))
    img.putdata([(x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 128)
                 for y in range(height) for x in range(width)])
    return img.convert(mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row: a decompression bomb's
    shape, a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_each_accepted_format_decodes_to_rgb(fmt: str) -> None:
    data = encode(gradient(40, 30), fmt)
    img = images.decode(data, "messages[0]")
    assert (img.width, img.height) == (40, 30)
    assert len(img.rgb) == 40 * 30 * 3
    assert img.digest == images.hashlib.sha256(data).hexdigest()
    if fmt in ("PNG", "BMP"):  # lossless: the pixels themselves
        assert img.rgb == gradient(40, 30).tobytes()


def test_transparency_is_composited_over_white() -> None:
    clear = PILImage.new("RGBA", (4, 4), (0, 0, 0, 0))
    img = images.decode(encode(clear, "PNG"), "images")
    assert img.rgb == b"\xff" * (4 * 4 * 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_image_is_scaled_down_keeping_its_aspect(fmt: str) -> None:
    big = PILImage.new("RGB", (3000, 1500), (200, 10, 10))
    img = images.decode(encode(big, fmt), "images", max_sent_pixels=1_000_000)
    assert img.width * img.height <= 1_000_000
    assert abs(img.width / img.height - 2.0) < 0.01
    assert len(img.rgb) == img.width * img.height * 3


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(BadRequest, match=r"images: image is too large: 30000x30000 pixels"):
        images.decode(png_header_only(30000, 30000), "images")


def assert_refused(data: bytes, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        images.decode(data, "messages[1].images[0]")


def test_hostile_files_are_bad_requests() -> None:
    frames = [PILImage.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert_refused(buf.getvalue(), r"messages\[1\]\.images\[0\]: animated images are not supported \(GIF, 2")
    assert_refused(b"", "image is empty")
    assert_refused(b"hello, I am not an image", "not a PNG, JPEG, WebP, GIF or BMP image")
    assert_refused(encode(gradient(16, 16), "TIFF"), "not a PNG, JPEG, WebP, GIF or BMP image")
    for fmt in ("PNG", "JPEG"):
        whole = encode(gradient(64, 64), fmt)
        for cut in (len(whole) // 2, len(whole) - 30, 40):  # into the pixel data
            assert_refused(whole[:cut], "invalid image data")
    garbled = bytearray(encode(gradient(64, 64), "PNG"))
    garbled[60:90] = b"\xff" * 30
    assert_refused(bytes(garbled), "invalid image data")


def test_base64_as_go_reads_it() -> None:
    data = encode(gradient(8, 8), "PNG")
    text = base64.b64encode(data).decode()
    assert images.b64decode(text, "images") == data
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"
    assert images.b64decode(wrapped, "images") == data  # `base64` wraps at 76 columns
    for bad in ("data:image/png;base64," + text, text[:-2] + "@@", text.replace("+", "-") + "-_",
                "abc"):
        with pytest.raises(BadRequest, match="images: invalid image data: not base64"):
            images.b64decode(bad, "images")


def test_base64_larger_than_the_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(BadRequest, match="larger than"):
        images.b64decode("A" * 4000, "images")


def test_base64_longer_than_one_slice_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_B64_SLICE", 8)
    data = bytes(range(256)) * 3
    assert images.b64decode(base64.b64encode(data).decode(), "images") == data


async def test_decode_all_names_the_bad_image() -> None:
    good = base64.b64encode(encode(gradient(8, 8), "PNG")).decode()
    decoded = await images.decode_all([good, good], "generate")
    assert [(i.width, i.height) for i in decoded] == [(8, 8), (8, 8)]
    with pytest.raises(BadRequest, match=r"generate\.images\[1\]: image is empty"):
        await images.decode_all([good, ""], "generate")
    with pytest.raises(BadRequest, match="images must be a list of base64 strings"):
        await images.decode_all([good, 7], "generate")
    assert await images.decode_all(None, "generate") == []
    await trio.lowlevel.checkpoint()
