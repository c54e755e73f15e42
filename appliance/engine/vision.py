"""Images for the runner: a model's projector, driven through llama.cpp's multimodal library (libmtmd).

Used INSIDE a runner process, next to the ``llama_model`` / ``llama_context`` it already owns.  The
flow for one prompt:

1. ``Vision.tokenize(prompt, images)`` (thread-safe, so it can run on the command-reader thread):
   the prompt holds one :data:`MARKER` per image, in order; images come as raw RGB pixels (the
   server has already decoded and checked the file, the runner never parses an image format).  The
   result is a list of chunks: :class:`TextChunk` (plain token ids, for the runner's shared batch)
   and :class:`ImageChunk` (an image already resized and normalised for the projector, with its
   token count and a content id).  mtmd adds the model's own image delimiters around each image
   (gemma3: ``<start_of_image>`` ... ``<end_of_image>``) as text.
2. For each image chunk, in prompt order: ``Vision.encode(chunk)`` runs the vision tower (the slow,
   CPU-heavy part: not thread-safe, one encode at a time per ``Vision``) and returns its embeddings;
   ``Vision.decode(ctx, chunk, embeddings, seq_id=, n_past=)`` writes them into the sequence's KV
   cache with its own ``llama_decode`` call (a ``llama_batch`` holds tokens or embeddings, never
   both) and returns the position after the image.  ``evaluate`` does both.

Positions and the KV cache, per chunk (what the runner must track):

* A text chunk of n tokens takes n KV cells and n positions.
* An image chunk takes ``n_tokens`` KV cells and advances the position by ``n_pos``.  The two are
  equal unless the model uses M-RoPE (``mrope``: Qwen2-VL and later), where ``n_pos`` is smaller,
  so a runner with images must keep ``n_past`` (the next position) apart from the number of cached
  cells.  Text after an image starts at the position ``decode`` returns.
* When ``non_causal`` is true (gemma3), the image's embeddings attend to each other in both
  directions.  ``decode`` switches the context to non-causal attention for its own call only; the
  whole image must then fit in one micro-batch (``n_ubatch >= n_tokens``, llama.cpp aborts the
  process otherwise), so ``decode`` refuses an image larger than ``n_ubatch``.  Never put an
  image's decode in the same ``llama_decode`` as other sequences' tokens.
* Image decodes request no logits: a prompt must end with text (templates always put the assistant
  prefix after the last image), the runner samples from its own batch's last token as usual.
* Prefix cache: an image's cells are valid only as a whole and only for the same pixels.
  ``ImageChunk.cache_keys`` gives one key per cell (the content id and the cell index) that can
  never equal a token id; compare prompts on those and, if the common prefix ends inside an image,
  back it off to the image's start.  The same holds for context shift and truncation: they may
  drop whole images, never part of one.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

#: mtmd's default media marker: the server replaces each of its image tags with this, in order.
MARKER = "<__media__>"

#: The largest image side the runner accepts; the server refuses larger images long before this.
MAX_IMAGE_SIDE = 16384


class VisionError(RuntimeError):
    """libmtmd failed: the projector does not load, or an encode or decode failed."""


class ImageInputError(ValueError):
    """The prompt and images do not fit together (marker count, pixel buffer size)."""


class Image(NamedTuple):
    """One decoded image: ``width * height`` RGB pixels, 3 bytes each, row by row."""

    width: int
    height: int
    rgb: bytes

    @property
    def id(self) -> str:
        """A content id: equal for equal pixels, different (up to SHA-256) otherwise."""
        h = hashlib.sha256(f"{self.width}x{self.height}:".encode())
        h.update(self.rgb)
        return h.hexdigest()


@dataclass(frozen=True)
class TextChunk:
    tokens: list[int]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


@dataclass(eq=False)
class ImageChunk:
    """An image (or one slice of one) ready to encode; owns its libmtmd chunk until ``close``."""

    id: str
    n_tokens: int  # KV cells it takes
    n_pos: int  # positions it advances (smaller than n_tokens only with M-RoPE)
    _ptr: int = field(repr=False)
    _finalizer: Any = field(default=None, repr=False)

    @property
    def cache_keys(self) -> tuple[str, ...]:
        """One key per KV cell, for prefix comparison; never equal to a token id."""
        return tuple(f"img:{self.id}:{i}" for i in range(self.n_tokens))

    @property
    def closed(self) -> bool:
        return self._finalizer is None or not self._finalizer.alive

    def close(self) -> None:
        """Free the preprocessed pixels (idempotent; also done when the chunk is collected)."""
        if self._finalizer is not None:
            self._finalizer()


Chunk = TextChunk | ImageChunk


@dataclass
class Prompt:
    """A tokenized prompt: its chunks in order, and libmtmd's own totals for them."""

    chunks: list[Chunk]
    n_tokens: int
    n_pos: int

    @property
    def images(self) -> list[ImageChunk]:
        return [c for c in self.chunks if isinstance(c, ImageChunk)]

    def close(self) -> None:
        for image in self.images:
            image.close()


class _MtmdLog:
    """libmtmd's (and clip's) log sink: warnings and errors to stderr, the last errors kept so that
    a failure can say why (libmtmd returns NULL or a bare code and logs the reason)."""

    def __init__(self) -> None:
        self.verbose = False
        self.errors: collections.deque[str] = collections.deque(maxlen=4)
        self._callback: Any = None  # libmtmd keeps the pointer: it lives as long as the process

    def install(self, mtmd: Any, llama: Any, *, verbose: bool) -> None:
        self.verbose = self.verbose or verbose
        if self._callback is not None:
            return

        @llama.llama_log_callback
        def sink(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", "replace")
            if level == 4:  # GGML_LOG_LEVEL_ERROR
                self.errors.append(line.strip())
            if self.verbose or level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
                sys.stderr.write(line)

        self._callback = sink
        mtmd.mtmd_helper_log_set(sink, ctypes.c_void_p(0))

    def reason(self) -> str:
        """The errors logged since the last call, for an exception message."""
        text = "; ".join(e for e in self.errors if e)
        self.errors.clear()
        return f": {text}" if text else ""


_log = _MtmdLog()


class Vision:
    """A projector loaded for one text model, inside the runner process."""

    def __init__(self, model: Any, projector: str, *, n_threads: int, use_gpu: bool = False,
                 verbose: bool = False) -> None:
        import llama_cpp as llama
        import llama_cpp.mtmd_cpp as mtmd

        self._llama, self._mtmd = llama, mtmd
        _log.install(mtmd, llama, verbose=verbose)
        _log.reason()  # forget errors from before this call
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = max(1, n_threads)
        params.print_timings = False
        params.media_marker = MARKER.encode()
        ctx = mtmd.mtmd_init_from_file(projector.encode(), model, params)
        if not ctx:
            raise VisionError(f"unable to load the projector {projector}{_log.reason()}")
        self._ctx = ctx
        self._finalizer = weakref.finalize(self, mtmd.mtmd_free, ctx)
        if not mtmd.mtmd_support_vision(ctx):
            self.close()
            raise VisionError(f"the projector {projector} has no vision encoder")
        self.n_embd = int(llama.llama_model_n_embd_inp(model))
        #: M-RoPE: positions advance by n_pos per image, not n_tokens
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(ctx))
        #: images are decoded with non-causal attention (and must fit in one micro-batch)
        self.non_causal = bool(mtmd.mtmd_decode_use_non_causal(ctx, None))

    def close(self) -> None:
        self._finalizer()

    # -- tokenize -------------------------------------------------------------------------------

    def tokenize(self, prompt: str, images: Sequence[Image | tuple[int, int, bytes]], *,
                 add_special: bool = True) -> Prompt:
        """Split ``prompt`` at its markers into text tokens and image chunks (thread-safe)."""
        mtmd = self._mtmd
        pictures = [Image(*image) for image in images]
        n_markers = prompt.count(MARKER)
        if n_markers != len(pictures):
            raise ImageInputError(f"the prompt has {n_markers} image markers for {len(pictures)} images")
        bitmaps: list[int] = []
        chunks_ptr = mtmd.mtmd_input_chunks_init()
        if not chunks_ptr:
            raise VisionError("unable to allocate a chunk list")
        try:
            for picture in pictures:
                bitmaps.append(self._bitmap(picture))
            data = prompt.encode("utf-8")
            text = mtmd.mtmd_input_text(text=data, text_len=len(data), add_special=add_special,
                                        parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self._ctx, chunks_ptr, ctypes.byref(text), array, len(bitmaps))
            if rc == 1:
                raise ImageInputError("the prompt's image markers do not match its images")
            if rc != 0:
                raise VisionError(f"image preprocessing failed ({rc}){_log.reason()}")
            return Prompt(chunks=self._chunks(chunks_ptr),
                          n_tokens=int(mtmd.mtmd_helper_get_n_tokens(chunks_ptr)),
                          n_pos=int(mtmd.mtmd_helper_get_n_pos(chunks_ptr)))
        finally:
            mtmd.mtmd_input_chunks_free(chunks_ptr)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _bitmap(self, image: Image) -> int:
        mtmd = self._mtmd
        width, height, rgb = image
        if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
            raise ImageInputError(f"image size {width}x{height} is out of range")
        if not isinstance(rgb, bytes):
            raise ImageInputError("image pixels must be bytes")
        if len(rgb) != width * height * 3:
            raise ImageInputError(f"{width}x{height} RGB needs {width * height * 3} bytes, got {len(rgb)}")
        # c_char_p points into the bytes object itself: no copy here, libmtmd copies once
        pixels = ctypes.cast(ctypes.c_char_p(rgb), ctypes.POINTER(ctypes.c_uint8))
        bitmap = mtmd.mtmd_bitmap_init(width, height, pixels)
        if not bitmap:
            raise VisionError("unable to allocate an image bitmap")
        mtmd.mtmd_bitmap_set_id(bitmap, image.id.encode())
        return int(bitmap)

    def _chunks(self, chunks_ptr: int) -> list[Chunk]:
        mtmd = self._mtmd
        out: list[Chunk] = []
        try:
            for i in range(mtmd.mtmd_input_chunks_size(chunks_ptr)):
                chunk = mtmd.mtmd_input_chunks_get(chunks_ptr, i)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    if n.value:
                        out.append(TextChunk(tokens[: n.value]))
                elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    out.append(self._image_chunk(chunk))
                else:
                    raise VisionError("the projector produced a non-image media chunk")
        except BaseException:
            for c in out:
                if isinstance(c, ImageChunk):
                    c.close()
            raise
        return out

    def _image_chunk(self, chunk: int) -> ImageChunk:
        mtmd = self._mtmd
        owned = mtmd.mtmd_input_chunk_copy(chunk)  # outlives the chunk list it came from
        if not owned:
            raise VisionError("unable to copy an image chunk")
        image = ImageChunk(id=(mtmd.mtmd_input_chunk_get_id(owned) or b"").decode(),
                           n_tokens=int(mtmd.mtmd_input_chunk_get_n_tokens(owned)),
                           n_pos=int(mtmd.mtmd_input_chunk_get_n_pos(owned)), _ptr=int(owned))
        image._finalizer = weakref.finalize(image, mtmd.mtmd_input_chunk_free, owned)
        return image

    # -- evaluate -------------------------------------------------------------------------------

    def encode(self, image: ImageChunk) -> np.ndarray:
        """Run the vision tower: ``float32[n_tokens, n_embd]`` (not thread-safe per ``Vision``)."""
        mtmd = self._mtmd
        if image.closed:
            raise VisionError("the image chunk was already freed")
        rc = mtmd.mtmd_encode_chunk(self._ctx, image._ptr)
        if rc != 0:
            raise VisionError(f"image encoding failed ({rc}){_log.reason()}")
        out = mtmd.mtmd_get_output_embd(self._ctx)
        if not out:
            raise VisionError("image encoding produced no embeddings")
        flat = np.ctypeslib.as_array(out, shape=(image.n_tokens * self.n_embd,))
        return flat.reshape(image.n_tokens, self.n_embd).copy()

    def decode(self, ctx: Any, image: ImageChunk, embeddings: np.ndarray, *, seq_id: int,
               n_past: int) -> int:
        """Put an encoded image into ``seq_id``'s KV cache at ``n_past``; returns the next position."""
        llama, mtmd = self._llama, self._mtmd
        if image.closed:
            raise VisionError("the image chunk was already freed")
        if embeddings.shape != (image.n_tokens, self.n_embd) or embeddings.dtype != np.float32:
            raise VisionError("embeddings do not match the image chunk")
        n_ubatch = int(llama.llama_n_ubatch(ctx))
        if self.non_causal and image.n_tokens > n_ubatch:
            raise ImageInputError(f"an image of {image.n_tokens} tokens needs a micro-batch (num_batch) of "
                                  f"at least {image.n_tokens}; this model runs with {n_ubatch}")
        embd = np.ascontiguousarray(embeddings)
        new_n_past = llama.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self._ctx, ctx, image._ptr, embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n_past,
            seq_id, n_ubatch, ctypes.byref(new_n_past), mtmd.mtmd_helper_post_decode_callback(),
            ctypes.c_void_p(0))
        if rc != 0:
            raise VisionError(f"image decode failed ({rc}): context full or out of memory{_log.reason()}")
        return int(new_n_past.value)

    def evaluate(self, ctx: Any, image: ImageChunk, *, seq_id: int, n_past: int) -> int:
        """``encode`` then ``decode``; returns the position after the image."""
        return self.decode(ctx, image, self.encode(image), seq_id=seq_id, n_past=n_past)
