"""The vocabulary of a Hugging Face model folder, as llama.cpp's GGUF tokenizer metadata.

Two tokenizers are understood, without the ``tokenizers``/``sentencepiece`` packages:

* ``tokenizer.model`` (SentencePiece BPE, Llama 1/2, Mistral, TinyLlama...): read by a small protobuf
  reader, written as llama.cpp's ``llama`` tokenizer with scores and token types;
* ``tokenizer.json`` with a byte-level BPE model (Llama 3, SmolLM, GPT-2 style): written as the
  ``gpt2`` tokenizer with its merges.  The pre-tokenizer llama.cpp must apply is recognised from the
  pre-tokenizer's structure and its split regexes (llama.cpp's own converter hashes the output of the
  Hugging Face tokenizer instead, which needs that library); an unknown one falls back to llama.cpp's
  ``default`` and is reported as a warning.

Special token ids, ``add_bos``/``add_eos``, merges and the chat template come from gguf's
``SpecialVocab`` (what llama.cpp's converter uses), after the files it reads were checked here for
size and shape.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from appliance.store.convert import ConversionError
from appliance.store.convert.safetensors import read_json

MAX_TOKENIZER_BYTES = 64 << 20
MAX_CONFIG_BYTES = 16 << 20
#: The largest real vocabularies are ~260k tokens.
MAX_VOCAB = 1 << 21

#: The files gguf's SpecialVocab reads, and their size caps (it reads them whole).
SPECIAL_VOCAB_FILES = {"tokenizer.json": MAX_TOKENIZER_BYTES, "tokenizer_config.json": MAX_CONFIG_BYTES,
                       "config.json": MAX_CONFIG_BYTES, "chat_template.json": MAX_CONFIG_BYTES,
                       "chat_template.jinja": MAX_CONFIG_BYTES}

#: Split regexes of byte-level BPE pre-tokenizers -> llama.cpp's pre-tokenizer names.
SPLIT_PRE_TOKENIZERS = {
    # Llama 3 / 3.1 / 3.2 and their fine-tunes
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen 2 style (single digits)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

TOKEN_NORMAL = int(gguf.TokenType.NORMAL)
TOKEN_CONTROL = int(gguf.TokenType.CONTROL)
TOKEN_USER_DEFINED = int(gguf.TokenType.USER_DEFINED)
TOKEN_UNUSED = int(gguf.TokenType.UNUSED)


@dataclass
class Vocabulary:
    model: str  # llama.cpp's tokenizer.ggml.model: "gpt2" or "llama"
    pre: str
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    warnings: list[str] = field(default_factory=list)
    special: gguf.SpecialVocab | None = None


def read_vocabulary(folder: Path, n_vocab: int) -> Vocabulary:
    """The folder's tokenizer for a model with ``n_vocab`` embedding rows (padded up to it)."""
    tokenizer_config = _optional_json(folder / "tokenizer_config.json")
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocabulary(folder, n_vocab, tokenizer_config)
    elif (folder / "tokenizer.json").is_file():
        vocab = _bpe_vocabulary(read_json(folder / "tokenizer.json", MAX_TOKENIZER_BYTES), n_vocab)
    else:
        raise ConversionError("no tokenizer in the model folder: tokenizer.json or tokenizer.model is needed")
    prefix = tokenizer_config.get("add_prefix_space")
    if isinstance(prefix, bool):
        vocab.add_space_prefix = prefix
    vocab.special = _special_vocabulary(folder, vocab)
    return vocab


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path, MAX_CONFIG_BYTES) if path.is_file() else {}


def write_vocabulary(writer: gguf.GGUFWriter, vocab: Vocabulary) -> None:
    """Tokens, types, scores, merges, special ids, add_* flags and the chat template."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.special is not None:
        vocab.special.add_to_gguf(writer, quiet=True)


def _special_vocabulary(folder: Path, vocab: Vocabulary) -> gguf.SpecialVocab:
    """Merges, special token ids, add_* flags and the chat template, read by gguf's SpecialVocab."""
    for name, limit in SPECIAL_VOCAB_FILES.items():
        path = folder / name
        if path.is_file() and path.stat().st_size > limit:
            raise ConversionError(f"{name} is larger than {limit >> 20} MiB")
    try:
        special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise ConversionError(f"the tokenizer files are malformed: {exc!r}"[:300]) from exc
    if vocab.model == "gpt2" and not special.merges:
        raise ConversionError("tokenizer.json has no BPE merges")
    if special.chat_template is not None and not isinstance(special.chat_template, str):
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                   and isinstance(t.get("template"), str) for t in special.chat_template):
            raise ConversionError("tokenizer_config.json: chat_template must be a string or a list of "
                                  "{name, template} objects")
    return special


# -- byte-level BPE (tokenizer.json) ---------------------------------------------------------------

def _bpe_vocabulary(tokenizer: dict[str, Any], n_vocab: int) -> Vocabulary:
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConversionError(f"tokenizer.json: a {kind or 'missing'} tokenizer model is not supported "
                              "(byte-level BPE, or SentencePiece from tokenizer.model)")
    if model.get("byte_fallback"):
        raise ConversionError("tokenizer.json is a SentencePiece-style BPE (byte_fallback): "
                              "include the model's tokenizer.model")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ConversionError("tokenizer.json has no vocabulary")
    by_id: dict[int, tuple[str, int]] = {}
    for text, token_id in vocab.items():
        _check_id(token_id, n_vocab, text)
        by_id[token_id] = (text, TOKEN_NORMAL)
    added = tokenizer.get("added_tokens") or []
    if not isinstance(added, list):
        raise ConversionError("tokenizer.json: added_tokens must be a list")
    for entry in added:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ConversionError("tokenizer.json: an added token has no content")
        text = entry["content"]
        token_id = _check_id(entry.get("id"), n_vocab, text)
        special = entry.get("special") is True or _looks_special(text)
        by_id[token_id] = (text, TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
    out = Vocabulary(model="gpt2", pre=_pre_tokenizer(tokenizer))
    if out.pre == "default":
        out.warnings.append("unknown pre-tokenizer in tokenizer.json: llama.cpp's default is used, "
                            "tokenization may differ from the original model")
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED))
        out.tokens.append(text)
        out.types.append(kind)
    return out


def _check_id(token_id: object, n_vocab: int, text: str) -> int:
    if type(token_id) is not int or not 0 <= token_id < n_vocab:
        raise ConversionError(f"tokenizer: token {text[:40]!r} has id {str(token_id)[:20]}, outside the "
                              f"model's {n_vocab} embeddings")
    return token_id


def _looks_special(text: str) -> bool:
    """Added tokens that llama.cpp's converter treats as control tokens even when not marked special."""
    return ((text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")
            or (text.startswith("<unused") and text.endswith(">")))


def _flat_pre_tokenizers(tokenizer: dict[str, Any]) -> list[dict[str, Any]]:
    pre = tokenizer.get("pre_tokenizer")
    if not isinstance(pre, dict):
        return []
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers")
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
    return [pre]


def _pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json ("default" if unknown)."""
    steps = _flat_pre_tokenizers(tokenizer)
    splits = [s.get("pattern", {}).get("Regex") for s in steps
              if s.get("type") == "Split" and isinstance(s.get("pattern"), dict)]
    if splits:
        return SPLIT_PRE_TOKENIZERS.get(splits[0], "default") if len(splits) == 1 else "default"
    kinds = [s.get("type") for s in steps]
    byte_level_regex = bool(steps) and steps[-1].get("use_regex", True) is True
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") is True and byte_level_regex:
        return "smollm"  # SmolLM / StarCoder: single digits, then GPT-2's regex
    return "default"


# -- SentencePiece (tokenizer.model) ---------------------------------------------------------------

SPM_BPE = 2


def _sentencepiece_vocabulary(folder: Path, n_vocab: int, tokenizer_config: dict[str, Any]) -> Vocabulary:
    path = folder / "tokenizer.model"
    data = path.read_bytes() if path.stat().st_size <= MAX_TOKENIZER_BYTES else None
    if data is None:
        raise ConversionError(f"tokenizer.model is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
    pieces, model_type, add_dummy_prefix = parse_sentencepiece(data)
    if model_type != SPM_BPE:
        raise ConversionError("tokenizer.model is a SentencePiece unigram model: only SentencePiece BPE "
                              "(the llama tokenizer) is supported")
    if len(pieces) > n_vocab:
        raise ConversionError(f"tokenizer.model has {len(pieces)} pieces, more than the model's "
                              f"{n_vocab} embeddings")
    out = Vocabulary(model="llama", pre="default", scores=[], add_space_prefix=add_dummy_prefix)
    assert out.scores is not None
    for piece, score, kind in pieces:
        out.tokens.append(piece)
        out.scores.append(score)
        out.types.append(kind)
    for i in range(len(pieces), n_vocab):
        out.tokens.append(f"[PAD{i}]")
        out.scores.append(-1000.0)
        out.types.append(TOKEN_UNUSED)
    added = _optional_json(folder / "added_tokens.json")
    for text, value in added.items():
        token_id = _check_id(value, n_vocab, text)
        out.tokens[token_id], out.scores[token_id], out.types[token_id] = text, -1000.0, TOKEN_USER_DEFINED
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ConversionError("tokenizer_config.json: added_tokens_decoder must be an object")
    for key, entry in decoder.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ConversionError("tokenizer_config.json: an added token has no content")
        text = entry["content"]
        token_id = _check_id(int(key) if key.isdigit() and len(key) < 10 else None, n_vocab, text)
        special = entry.get("special") is True or _looks_special(text)
        out.tokens[token_id] = text if special else text.replace("\u2581", " ")
        out.scores[token_id] = -1000.0
        out.types[token_id] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    return out


def parse_sentencepiece(data: bytes) -> tuple[list[tuple[str, float, int]], int, bool]:
    """(pieces as (text, score, type), model type, add_dummy_prefix) from a SentencePiece ModelProto."""
    pieces: list[tuple[str, float, int]] = []
    model_type, add_dummy_prefix = 1, True  # the proto's defaults: UNIGRAM, true
    for number, value in _fields(data):
        if number == 1 and isinstance(value, memoryview):
            if len(pieces) >= MAX_VOCAB:
                raise ConversionError("tokenizer.model has too many pieces")
            pieces.append(_piece(value))
        elif number == 2 and isinstance(value, memoryview):  # TrainerSpec
            for sub, sub_value in _fields(value):
                if sub == 3 and isinstance(sub_value, int):
                    model_type = sub_value
        elif number == 3 and isinstance(value, memoryview):  # NormalizerSpec
            for sub, sub_value in _fields(value):
                if sub == 3 and isinstance(sub_value, int):
                    add_dummy_prefix = bool(sub_value)
    if not pieces:
        raise ConversionError("tokenizer.model holds no pieces (not a SentencePiece model?)")
    return pieces, model_type, add_dummy_prefix


def _piece(data: memoryview) -> tuple[str, float, int]:
    text, score, kind = None, 0.0, TOKEN_NORMAL
    for number, value in _fields(data):
        if number == 1 and isinstance(value, memoryview):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConversionError("tokenizer.model: a piece is not UTF-8") from exc
        elif number == 2 and isinstance(value, bytes):
            score = struct.unpack("<f", value)[0]
        elif number == 3 and isinstance(value, int):
            if not 1 <= value <= 6:
                raise ConversionError(f"tokenizer.model: unknown piece type {value}")
            kind = value  # SentencePiece's piece types are llama.cpp's token types
    if text is None:
        raise ConversionError("tokenizer.model: a piece has no text")
    return text, score, kind


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ConversionError("tokenizer.model: truncated or invalid protobuf")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int | bytes | memoryview]]:
    """(field number, value) of a protobuf message: int for varints, bytes for fixed-width values,
    a memoryview for length-delimited ones (strings and sub-messages)."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(view, pos)
            yield number, value
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(view):
                raise ConversionError("tokenizer.model: truncated protobuf")
            yield number, bytes(view[pos : pos + width])
            pos += width
        elif wire == 2:
            length, pos = _varint(view, pos)
            if length > len(view) - pos:
                raise ConversionError("tokenizer.model: a field runs past the end of the file")
            yield number, view[pos : pos + length]
            pos += length
        else:
            raise ConversionError(f"tokenizer.model: unsupported protobuf wire type {wire}")
