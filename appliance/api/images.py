"""Images from clients: checked and decoded by the server, handed to a runner as raw RGB pixels.

Every image a client sends is hostile input, so the runner never sees an image file: the server
decodes it here and passes ``width x height`` RGB bytes, which llama.cpp's multimodal library takes as
they are (``mtmd_bitmap_init``).  What is refused, each with a 400 naming the image:

* anything that is not strict base64, an empty image, an encoded image over :data:`MAX_IMAGE_BYTES`;
* a format other than PNG, JPEG, WebP, GIF and BMP (what vision clients send), or not an image at all;
* an image whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels, refused before a single pixel
  is decoded (a 30000 x 30000 "decompression bomb" is a few KB of PNG);
* an animated image (GIF, APNG, WebP): which frame a model should see is not for us to guess;
* a truncated or corrupt file (Pillow is told never to pad a truncated image).

What is kept: an image larger than :data:`MAX_SENT_PIXELS` is scaled down (keeping its aspect ratio)
before it is sent; every vision encoder resizes far below that anyway, and the runner's pipe and memory
stay bounded.  A JPEG is decoded straight at the reduced scale (libjpeg's DCT scaling), so a large photo
never exists at full size in memory.  At most :data:`DECODERS` images are decoded at once, each in a
worker thread (Pillow releases the GIL while it decodes); base64 is decoded in slices so that the GIL is
handed back between them.
"""

from __future__ import annotations

import binascii
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from appliance.errors import BadRequest

#: Encoded bytes one image may have (the body cap bounds the total anyway).
MAX_IMAGE_BYTES = 48 << 20
#: Pixels an image's header may claim (8192 x 8192): a 48-megapixel phone photo passes.
MAX_IMAGE_PIXELS = 8192 * 8192
#: Pixels handed to a runner: larger images are scaled down to this first (~2048 x 2048).
MAX_SENT_PIXELS = 2048 * 2048
#: Images decoded at once, server-wide (each may briefly take width x height x 4 bytes).
DECODERS = 2
#: Formats accepted, as Pillow names them.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

_B64_SLICE = 4 << 20  # a multiple of 4, so that every slice but the last is whole base64


@dataclass(frozen=True)
class Image:
    """A decoded image: ``width * height * 3`` bytes of RGB, row by row, and its content digest."""

    width: int
    height: int
    rgb: bytes
    digest: str  # sha256 of the encoded bytes the client sent: the same file is the same image

    def to_wire(self) -> dict[str, Any]:
        """The runner protocol's form (see appliance/engine/protocol.py)."""
        import base64

        return {"width": self.width, "height": self.height, "rgb": base64.b64encode(self.rgb).decode(),
                "digest": self.digest}


def b64decode(text: str, where: str) -> bytes:
    """Base64 as Go decodes an image (``=`` padding, standard alphabet, line breaks ignored), in slices."""
    if "\n" in text or "\r" in text:  # `base64` wraps its output at 76 columns; Go skips the breaks
        text = text.replace("\r", "").replace("\n", "")
    if len(text) > (MAX_IMAGE_BYTES * 4 + 2) // 3 + 4:
        raise BadRequest(f"{where}: image is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        parts = [binascii.a2b_base64(text[i : i + _B64_SLICE], strict_mode=True)
                 for i in range(0, len(text), _B64_SLICE)]
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{where}: invalid image data: not base64 ({exc})") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decode(data: bytes, where: str, max_sent_pixels: int = MAX_SENT_PIXELS) -> Image:
    """Check and decode one image file (blocking: call it in a worker thread)."""
    from PIL import Image as PILImage
    from PIL import ImageFile, UnidentifiedImageError

    if not data:
        raise BadRequest(f"{where}: image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest(f"{where}: image is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    PILImage.MAX_IMAGE_PIXELS = None  # the check below replaces Pillow's warning-then-error one
    try:
        # open() reads only the header: the size is known before anything is decoded.
        img = PILImage.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise BadRequest(f"{where}: invalid image data: not a PNG, JPEG, WebP, GIF or BMP image") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some bad headers
        raise BadRequest(f"{where}: invalid image data: {exc}") from exc
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise BadRequest(f"{where}: image has no pixels ({width}x{height})")
        if width * height > MAX_IMAGE_PIXELS:
            raise BadRequest(f"{where}: image is too large: {width}x{height} pixels, more than "
                             f"{MAX_IMAGE_PIXELS:,} (8192x8192)")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise BadRequest(f"{where}: animated images are not supported ({img.format}, {frames} frames)")
        target = _fit(width, height, max_sent_pixels)
        try:
            if img.format == "JPEG" and target != (width, height):
                img.draft("RGB", target)  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: never full size
            img.load()
            rgb = _flatten(img)
            if rgb.size != target:
                rgb = rgb.resize(_fit(rgb.width, rgb.height, max_sent_pixels), PILImage.Resampling.BICUBIC)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated, corrupt
            raise BadRequest(f"{where}: invalid image data: {exc}") from exc
        return Image(rgb.width, rgb.height, rgb.tobytes(), hashlib.sha256(data).hexdigest())


def _flatten(img: Any) -> Any:
    """RGB, with any transparency composited over white (as Ollama does: a transparent PNG's hidden
    pixels are often black or garbage)."""
    from PIL import Image as PILImage

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``width x height`` scaled down (aspect kept) to at most ``max_pixels``; unchanged if it fits."""
    if width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


_limiter: Any = None


async def decode_all(images: Any, where: str) -> list[Image]:
    """A request's ``images`` (a list of base64 strings), each checked and decoded off the event loop."""
    import trio

    global _limiter
    if images is None:
        return []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadRequest(f"{where}: images must be a list of base64 strings")
    if _limiter is None:
        _limiter = trio.CapacityLimiter(DECODERS)
    out = []
    for i, text in enumerate(images):
        at = f"{where}.images[{i}]" if len(images) > 1 else f"{where}.images"
        async with _limiter:
            data = await trio.to_thread.run_sync(b64decode, text, at)
            out.append(await trio.to_thread.run_sync(decode, data, at))
    return out
