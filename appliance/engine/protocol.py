"""The line protocol between the server and a runner process (JSON objects, one per line).

Server -> runner (stdin):
    {"op": "completion", "id": 7, "prompt": "...", "options": {...}, "grammar": str|null,
     "add_special": true, "images": [{"width": 64, "height": 64, "rgb": base64, "digest": "..."}]}
        (``images``, for a runner with a projector: one per MEDIA_MARKER in the prompt, in order,
        as width x height RGB pixels, 3 bytes each, row by row)
        (``"logprobs": true, "top_logprobs": 0-20`` ask for a logprobs entry per generated token)
    {"op": "cancel", "id": 7}
    {"op": "tokenize", "id": 8, "text": "...", "add_special": false}
    {"op": "detokenize", "id": 9, "tokens": [1, 2]}
    {"op": "embed", "id": 10, "inputs": ["...", "..."], "truncate": true}
    {"op": "shutdown"}

Runner -> server (stdout; the runner's real stdout, every other output goes to stderr):
    {"event": "ready", "n_ctx": 8192, "n_ctx_slot": 2048, "n_parallel": 4, "n_ctx_train": 8192, ...}
    {"id": 7, "event": "token", "text": "Hel"}
        (with logprobs asked: ``"logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108],
        "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]``, the entries of the tokens whose
        text this event completes; the last token event may carry entries and no text)
    {"id": 7, "event": "done", "done_reason": "stop"|"length"|"cancel", "stop_sequence": str|null,
     "prompt_eval_count": 12,
     "prompt_eval_duration": ns, "eval_count": 40, "eval_duration": ns, "prompt_cached": 4,
     "truncated": false}
    {"id": 8, "event": "result", ...payload}
    {"id": 7, "event": "error", "error": "..."}

Ids are chosen by the server and unique per runner.  Everything a runner sends after an error
about a request id is ignored.
"""

from __future__ import annotations

import json
from typing import Any

#: Where an image goes in a completion's prompt (libmtmd's default marker, ``vision.MARKER``).
MEDIA_MARKER = "<__media__>"
#: A single protocol line may not exceed this (prompts are bounded by the request-body cap).
MAX_LINE_BYTES = 256 << 20
#: Alternatives a token's logprobs entry may list (upstream's bound on ``top_logprobs``).
MAX_TOP_LOGPROBS = 20


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> dict[str, Any]:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("protocol message is not an object")
    return obj
