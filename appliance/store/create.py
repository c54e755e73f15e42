"""Building a model from an /api/create request: layers from a base model or uploaded blobs.

Runs as blocking code in a worker thread; progress goes to a callback as Ollama-style status
objects.  Every check that can fail on the client's input runs in :func:`plan_create` first, so
the route can answer 400/404 with a real status before it starts streaming.  Nothing is written
to the manifest until every layer is in place, and an existing model is never removed or
overwritten by a create that fails.
"""

from __future__ import annotations

import logging
import os
import posixpath
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.api.gojson import go_encode
from appliance.api.options import validate_options
from appliance.errors import ApplianceError, BadRequest, BlobNotFound, InsufficientStorage, InvalidGGUF
from appliance.store import manifests as mf
from appliance.store.blobs import DISK_FULL_MESSAGE
from appliance.store.convert.importer import SafetensorsImport, is_safetensors_import
from appliance.store.gguf import GGUFInfo, parameter_size_label, read_gguf
from appliance.store.local import Store
from appliance.store.manifests import Layer, Manifest
from appliance.store.model import read_config
from appliance.store.names import Name, parse_name
from appliance.store.split import SplitModel, is_shard, linked_shards, take_split_model

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

#: Quantization targets offered (Ollama's list) mapped to llama.cpp's LLAMA_FTYPE_MOSTLY_* values.
QUANT_TYPES = {"Q4_K_M": 15, "Q4_K_S": 14, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_K_M": 17, "Q5_K_S": 16,
               "Q6_K": 18, "Q5_0": 8, "Q5_1": 9, "Q3_K_M": 12, "Q3_K_S": 11, "Q3_K_L": 13, "Q2_K": 10}
QUANTIZABLE_SOURCES = {"F16", "BF16", "F32"}
MESSAGE_ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class CreatePlan:
    """A validated create request: what to build, before anything is written."""

    name: Name
    base_layers: list[Layer] = field(default_factory=list)
    base_config: dict[str, Any] = field(default_factory=dict)
    model_info: GGUFInfo | None = None
    from_name: Name | None = None
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    quantize: str | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    draft_info: GGUFInfo | None = None  # a new draft model's header (for the config's "draft" entry)
    safetensors: dict[str, str] | None = None  # a safetensors folder's files, converted by run_create
    split: SplitModel | None = None  # a split GGUF's shards, merged into one model blob by run_create


def _valid_rel_path(path: str) -> bool:
    """Like Go's fs.ValidPath: a relative, clean, slash-separated path with no '..' elements."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/")) and posixpath.normpath(path) == path


def _file_map(field_name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"'{field_name}' must be an object mapping file names to digests")
    for filename in value:
        if not _valid_rel_path(filename):
            raise BadRequest(f"invalid file path in '{field_name}': {filename!r}")
    return value


def _gguf_layers(store: Store, files: dict[str, str], adapters: bool) -> tuple[list[Layer], GGUFInfo | None]:
    layers: list[Layer] = []
    main_info: GGUFInfo | None = None
    for filename, digest in files.items():
        path = store.blobs.path(digest)  # validates the digest
        if not path.is_file():
            raise BadRequest(f"blob {digest} for {filename!r} not found; upload it first (POST /api/blobs)")
        try:
            info = read_gguf(path, max_array=0)
        except InvalidGGUF as exc:
            if adapters and filename.endswith((".safetensors", ".json", ".bin")):
                raise BadRequest("only GGUF adapters are supported; convert a safetensors adapter with "
                                 "llama.cpp's convert_lora_to_gguf.py first") from exc
            if filename.endswith(".bin"):
                raise BadRequest("pytorch .bin checkpoints are not supported; import the model's "
                                 "safetensors or a GGUF") from exc
            raise InvalidGGUF(f"{filename}: {exc}") from exc
        if is_shard(info, filename):  # plan_create takes a split model's shards out of 'files' first
            raise BadRequest(f"split GGUF {filename!r}: only the model itself may be a split GGUF, not an "
                             "adapter, a projector or a draft")
        if adapters:
            media_type = mf.MEDIA_ADAPTER
        elif info.architecture == "clip" or info.metadata.get("general.type") == "mmproj":
            media_type = mf.MEDIA_PROJECTOR
        else:
            media_type = mf.MEDIA_MODEL
            if main_info is not None:
                raise BadRequest("more than one model GGUF given; split GGUFs are not supported")
            main_info = info
        layers.append(Layer(media_type=media_type, digest=store.blobs.path(digest).name.replace("-", ":", 1),
                            size=path.stat().st_size))
    if adapters and len(layers) > 1:
        raise BadRequest("only one adapter is currently supported")
    return layers, main_info


def _draft_layer(store: Store, req: Mapping[str, Any]) -> tuple[Layer, GGUFInfo] | None:
    """The draft model the request names: an uploaded GGUF in ``draft_files`` (upstream's field), or
    the weights of a stored model in ``draft`` (ours: ``DRAFT <model>`` in a Modelfile)."""
    files = _file_map("draft_files", req.get("draft_files"))
    from_model = _str_field(req, "draft")
    if files and from_model:
        raise BadRequest("give either 'draft' or 'draft_files', not both")
    if files:
        if len(files) > 1:
            raise BadRequest("only one draft model GGUF is supported")
        [layer], info = _gguf_layers(store, files, adapters=False)
        if info is None:
            raise BadRequest("the draft must be a language model GGUF, not a projector")
        return Layer(mf.MEDIA_DRAFT, layer.digest, layer.size), info
    if from_model:
        stored = store.manifests.get(parse_name(from_model))
        weights = stored.manifest.first(mf.MEDIA_MODEL)
        if weights is None:
            raise BadRequest(f"draft model '{from_model}' has no weights")
        info = read_gguf(store.blobs.path(weights.digest), max_array=0)
        return Layer(mf.MEDIA_DRAFT, weights.digest, weights.size, from_=stored.name.display), info
    return None


def _licenses(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v]
    raise BadRequest("'license' must be a string or a list of strings")


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("'messages' must be a list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a role")
        if msg["role"] not in MESSAGE_ROLES:
            raise BadRequest(f"messages[{i}]: invalid role {msg['role']!r}")
        if not isinstance(msg.get("content", ""), str):
            raise BadRequest(f"messages[{i}]: content must be a string")
        out.append({"role": msg["role"], "content": msg.get("content", "")})
    return out


def _str_field(req: Mapping[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    return value


def plan_create(store: Store, req: Mapping[str, Any]) -> CreatePlan:
    """Validate an /api/create body against the store; raise BadRequest / NotFound with a reason."""
    plan = CreatePlan(name=parse_name(req.get("model") or req.get("name") or ""))
    files = _file_map("files", req.get("files"))
    adapters = _file_map("adapters", req.get("adapters"))
    from_ = _str_field(req, "from")
    if from_:
        if from_.startswith(("/", "./", "../", "~")) or "\\" in from_:
            raise BadRequest(f"'from' must name a model, not a path ({from_!r}); upload local files with "
                             "POST /api/blobs and pass them in 'files'")
        plan.from_name = parse_name(from_)
        base = store.manifests.get(plan.from_name)
        plan.base_config = read_config(store.blobs, base.manifest)
        shortest = base.name.display
        plan.base_layers = [Layer(layer.media_type, layer.digest, layer.size, from_=shortest, name=layer.name)
                            for layer in base.manifest.layers]
        model_layer = base.manifest.first(mf.MEDIA_MODEL)
        if model_layer is not None:
            plan.model_info = read_gguf(store.blobs.path(model_layer.digest), max_array=0)
        for key in ("template", "system"):
            layer = base.manifest.first(mf.MEDIA_TEMPLATE if key == "template" else mf.MEDIA_SYSTEM)
            if layer is not None:
                setattr(plan, key, store.blobs.read_bytes(layer.digest, 16 << 20).decode("utf-8", "replace"))
        params_layer = base.manifest.first(mf.MEDIA_PARAMS)
        if params_layer is not None:
            import json

            loaded = json.loads(store.blobs.read_bytes(params_layer.digest, 16 << 20))
            plan.parameters = loaded if isinstance(loaded, dict) else {}
        if files:  # a projector for the stored model (FROM model + FROM ./mmproj.gguf)
            projectors, model_info = _gguf_layers(store, files, adapters=False)
            if model_info is not None:
                raise BadRequest("with 'from', 'files' may only hold a projector (mmproj) GGUF")
            plan.base_layers = [layer for layer in plan.base_layers if layer.media_type != mf.MEDIA_PROJECTOR]
            plan.base_layers += projectors
    elif files and is_safetensors_import(files):
        # Checked now (config, headers, tokenizer: a 400 before streaming), converted by run_create.
        with SafetensorsImport(store.blobs, files, self_command()) as job:
            for warning in job.check():
                log.warning("importing %s: %s", plan.name.display, warning)
        plan.safetensors = dict(files)
    elif files:
        plan.split, files = take_split_model(store.blobs, files)
        if files:
            plan.base_layers, plan.model_info = _gguf_layers(store, files, adapters=False)
        if plan.split is not None:
            if plan.model_info is not None:
                raise BadRequest("more than one model GGUF given: a split GGUF's shards and another model")
            # A stand-in for the merged blob, which run_create writes and puts in its place.
            first = plan.split.first
            plan.base_layers.insert(0, Layer(mf.MEDIA_MODEL, first.digest, plan.split.size))
            plan.model_info = first.info
    else:
        raise BadRequest("neither 'from' or 'files' was specified")
    if adapters:
        adapter_layers, _ = _gguf_layers(store, adapters, adapters=True)
        plan.base_layers = [layer for layer in plan.base_layers if layer.media_type != mf.MEDIA_ADAPTER]
        plan.base_layers += adapter_layers
    draft = _draft_layer(store, req)
    if draft is not None:  # replaces the base model's draft, if it had one
        plan.base_layers = [layer for layer in plan.base_layers if layer.media_type != mf.MEDIA_DRAFT]
        plan.base_layers.append(draft[0])
        plan.draft_info = draft[1]

    template = _str_field(req, "template")
    if template is not None:
        from appliance.prompt.render import parse_template

        parse_template(template)  # raises TemplateError (400) with the position; BadRequest when huge
        plan.template = template
    system = _str_field(req, "system")
    if system is not None:
        plan.system = system
    plan.license = _licenses(req.get("license"))
    params = req.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise BadRequest("'parameters' must be an object")
        valid = validate_options(params)
        if valid.ignored:
            raise BadRequest(f"unknown parameter '{valid.ignored[0]}'")
        plan.parameters = {**plan.parameters, **valid}
    plan.messages = _messages(req.get("messages"))

    quantize = _str_field(req, "quantize") or _str_field(req, "quantization")
    if quantize:
        plan.quantize = quantize.upper()
        if plan.quantize not in QUANT_TYPES:
            raise BadRequest(f"unsupported quantization type {quantize}; use one of q4_K_M, q4_K_S, q8_0")
        source = plan.model_info.file_type if plan.model_info else ""
        if plan.safetensors is not None:
            source = "F16"  # what the conversion writes
        elif plan.model_info is None:
            raise BadRequest("nothing to quantize: the model has no weights")
        if source != plan.quantize and source not in QUANTIZABLE_SOURCES:
            raise BadRequest("quantization is only supported for F16, BF16 and F32 models")
    for key in ("renderer", "parser", "requires"):
        value = _str_field(req, key)
        if value:
            plan.extra_config[key] = value
    from appliance.prompt.builtin import check_names

    check_names(plan.extra_config.get("renderer"), plan.extra_config.get("parser"))  # a 400, not silence
    _detect_builtins(plan)
    if plan.model_info is not None:  # a layout llama.cpp cannot run is refused now, not at first use
        from appliance.errors import UnsupportedModel
        from appliance.store.gguf_compat import LLAMA_CPP_ARCHITECTURES, assess

        verdict = assess(plan.model_info)
        verdict.check()
        if (plan.quantize and plan.quantize != plan.model_info.file_type
                and verdict.architecture not in LLAMA_CPP_ARCHITECTURES):  # llama.cpp's quantizer loads it
            raise UnsupportedModel(f"cannot quantize architecture '{verdict.architecture}' here; "
                                   f"{verdict.message}")
    return plan


#: Architectures whose models need a built-in RENDERER/PARSER, set at create as upstream does (a name
#: this server lacks, like ``laguna``, falls back to the model's template when it runs).
ARCHITECTURE_BUILTINS = {"gemma4": "gemma4", "laguna": "laguna", "nemotron_h": "nemotron-3-nano",
                         "nemotron_h_moe": "nemotron-3-nano", "nemotron_h_omni": "nemotron-3-nano"}


def _detect_builtins(plan: CreatePlan) -> None:
    """The renderer and parser the model's architecture needs, where neither request nor base names one."""
    name = ARCHITECTURE_BUILTINS.get(plan.model_info.architecture) if plan.model_info else None
    missing = [key for key in ("renderer", "parser")
               if not (plan.extra_config.get(key) or plan.base_config.get(key))]
    if name is None or not missing:
        return
    for key in missing:
        plan.extra_config[key] = name
    if name == "gemma4" and "stop" not in plan.parameters:  # its turns end with <turn|>
        plan.parameters["stop"] = ["<turn|>"]


def _config_for(plan: CreatePlan) -> dict[str, Any]:
    """The ConfigV2 document, field order as Ollama writes it."""
    info, base = plan.model_info, plan.base_config
    arch = info.architecture if info else str(base.get("model_family", ""))
    config: dict[str, Any] = {
        "model_format": base.get("model_format") or "gguf",
        "model_family": base.get("model_family") or arch,
        "model_families": base.get("model_families") or ([arch] if arch else None),
        "model_type": base.get("model_type") or (parameter_size_label(info.parameter_count) if info else ""),
        "file_type": base.get("file_type") or (info.file_type if info else ""),
    }
    for key in ("renderer", "parser", "requires"):
        value = plan.extra_config.get(key) or base.get(key)
        if value:
            config[key] = value
    if plan.draft_info is not None:  # upstream's ConfigV2.Draft
        config["draft"] = {"model_format": "gguf", "architecture": plan.draft_info.architecture}
    elif isinstance(base.get("draft"), dict) and any(layer.media_type == mf.MEDIA_DRAFT
                                                      for layer in plan.base_layers):
        config["draft"] = base["draft"]
    config["architecture"] = "amd64"
    config["os"] = "linux"
    return config


def _quantize(store: Store, plan: CreatePlan, layer: Layer, progress: Progress) -> Layer:
    assert plan.quantize and plan.model_info
    source_type = plan.model_info.file_type
    if source_type == plan.quantize:
        return layer
    return _run_quantizer(store, plan, store.blobs.path(layer.digest), layer.size,
                          str(QUANT_TYPES[plan.quantize]), progress)


def _merge_split(store: Store, plan: CreatePlan, progress: Progress) -> Layer:
    """The split model's shards as one model blob, quantized on the way when ``-q`` asks for it."""
    assert plan.split and plan.model_info
    target = plan.quantize if plan.quantize and plan.quantize != plan.model_info.file_type else None
    with linked_shards(store.blobs, plan.split) as first_shard:
        layer = _run_quantizer(store, plan, first_shard, plan.split.size,
                               str(QUANT_TYPES[target]) if target else "copy", progress)
    plan.split = None
    return layer


def _run_quantizer(store: Store, plan: CreatePlan, source: Path, size: int, ftype: str,
                   progress: Progress) -> Layer:
    """Rewrite ``source`` into a new model blob in the quantizer child: as llama.cpp file type
    ``ftype``, or tensors unchanged with ``"copy"`` (a split GGUF merged)."""
    assert plan.model_info
    source_type = plan.model_info.file_type
    if ftype == "copy":
        status, what, failed = "merging split GGUF shards", "merging", "merging the split GGUF failed"
    else:
        status, what = f"quantizing {source_type} model to {plan.quantize}", f"quantizing to {plan.quantize}"
        failed = "quantization failed"
    progress({"status": status, "digest": "0", "total": size, "completed": 0})
    # The quantizer writes the blob's temp file itself.  It inherits the writer's descriptor, and with
    # it the temp file's lock, so a prune leaves the file alone for as long as the quantizer lives,
    # even if this server is killed meanwhile; the file then becomes the blob without a copy.
    with store.blobs.open_writer() as writer:
        cmd = [*self_command(), "quantize-worker", str(source), str(writer.temp_path), ftype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, pass_fds=(writer.fileno(),))
        if proc.returncode != 0:
            if _nearly_full(store.blobs.blobs_dir):
                # llama.cpp reports a failed write only as "iostream error", without the errno.
                log.warning("no space left on device %s into %s", what, store.blobs.blobs_dir)
                raise InsufficientStorage(f"{DISK_FULL_MESSAGE} ({what})")
            output = (proc.stderr or proc.stdout).replace(f"{source.parent}{os.sep}", "")  # no server paths
            reasons = [line.split(_LLAMA_REFUSAL, 1)[1] for line in output.splitlines()
                       if _LLAMA_REFUSAL in line]
            if reasons and "iostream" not in reasons[-1]:  # llama.cpp could not read the model: bad input
                raise BadRequest(f"{failed}: {reasons[-1].strip()[:500]}")
            tail = " ".join(output.strip().splitlines()[-3:])
            raise ApplianceError(f"{failed}: {tail[-500:] or proc.returncode}")
        progress({"status": status, "digest": "0", "total": size, "completed": size})
        progress({"status": "verifying conversion"})
        info = read_gguf(writer.temp_path, max_array=0)
        writer.adopt_contents()
        digest, _ = writer.commit()
        size = writer.size
    plan.model_info = info
    plan.base_config = {k: v for k, v in plan.base_config.items() if k != "file_type"}
    return Layer(mf.MEDIA_MODEL, digest, size)


#: How llama.cpp's quantizer logs the reason it gave up (an exception's message).
_LLAMA_REFUSAL = "failed to quantize: "

#: A failed write leaves less than this free (file systems allocate in blocks of at most this size).
_FULL_BELOW_BYTES = 1 << 20


def _nearly_full(folder: Path) -> bool:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize < _FULL_BELOW_BYTES


def self_command() -> list[str]:
    """How to re-invoke this program: the frozen binary itself, or ``python -m appliance``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "appliance"]


def _text_layer(store: Store, media_type: str, data: bytes) -> tuple[Layer, str]:
    digest, created = store.blobs.put_bytes(data)
    verb = "creating new layer" if created else "using existing layer"
    return Layer(media_type, digest, len(data)), f"{verb} {digest}"


def run_create(store: Store, plan: CreatePlan, progress: Progress, *, prune: bool = True) -> None:
    """Write the new layers and then the manifest (blocking; call from a worker thread).

    Quantizing, the slow part, runs first and unlocked.  Everything after it (the small layers, the
    check that every layer is present, the manifest) happens under the store lock, so a concurrent
    delete or prune cannot remove a blob between "using existing layer" and the manifest write.
    Replacing a model removes the blobs only its old manifest used, unless ``prune`` is off
    (OLLAMA_NOPRUNE), as in Ollama.
    """
    if plan.safetensors is not None:
        progress({"status": "converting model"})
        with SafetensorsImport(store.blobs, plan.safetensors, self_command()) as job:
            layer, plan.model_info, warnings = job.convert(progress)
        for warning in warnings:
            log.warning("converting %s: %s", plan.name.display, warning)
        plan.base_layers.insert(0, layer)
        plan.safetensors = None
    progress({"status": "reading model metadata" if plan.from_name else "parsing GGUF"})
    if plan.model_info is not None:
        from appliance.store.gguf_compat import assess

        verdict = assess(plan.model_info)
        if verdict.action == "translate":
            progress({"status": f"note: {verdict.message}"})
    quantized: dict[str, Layer] = {}
    if plan.split is not None:  # merged, and quantized when asked, in one pass over the shards
        stand_in = plan.split.first.digest
        quantized[stand_in] = _merge_split(store, plan, progress)
    elif plan.quantize:
        for layer in plan.base_layers:
            if layer.media_type == mf.MEDIA_MODEL:
                quantized[layer.digest] = _quantize(store, plan, layer, progress)
    with store.lock:
        layers, statuses = _kept_layers(store, plan, quantized)
        for media_type, data in _new_layer_contents(store, plan):
            layer, status = _text_layer(store, media_type, data)
            layers.append(layer)
            statuses.append(status)
        config_bytes = go_encode(_config_for(plan), sort_keys=False)
        config_digest, _ = store.blobs.put_bytes(config_bytes)
        config_layer = Layer(mf.MEDIA_CONFIG, config_digest, len(config_bytes))
        for status in statuses:
            progress({"status": status})
        progress({"status": "writing manifest"})
        replaced = store.digests_of(plan.name) if prune else set()
        manifest = Manifest(config=config_layer, layers=tuple(layers))
        store.write_manifest(plan.name, manifest)
        if replaced - manifest.all_digests():
            progress({"status": "removing unused layers"})
            store.remove_unused(replaced - manifest.all_digests())
    progress({"status": "success"})


def _kept_layers(store: Store, plan: CreatePlan,
                 quantized: dict[str, Layer]) -> tuple[list[Layer], list[str]]:
    """The base model's weights, adapters and projectors (quantized where asked), with their statuses."""
    layers: list[Layer] = []
    statuses: list[str] = []
    for layer in plan.base_layers:
        new = quantized.get(layer.digest, layer) if layer.media_type == mf.MEDIA_MODEL else layer
        if new is not layer:
            layers.append(new)
            statuses.append(f"creating new layer {new.digest}")
            continue
        if layer.media_type in (mf.MEDIA_TEMPLATE, mf.MEDIA_SYSTEM, mf.MEDIA_PARAMS, mf.MEDIA_MESSAGES,
                                mf.MEDIA_LICENSE, mf.MEDIA_PROMPT):
            continue  # re-created by _new_layer_contents from the merged values
        if not store.blobs.exists(layer.digest):
            raise BlobNotFound(f"layer {layer.digest} of the base model is missing from the store")
        layers.append(layer)
        statuses.append(f"using existing layer {layer.digest}")
    return layers, statuses


def _new_layer_contents(store: Store, plan: CreatePlan) -> list[tuple[str, bytes]]:
    """(media type, bytes) of the template, system, license, params and messages layers, in order."""
    out: list[tuple[str, bytes]] = []
    if plan.template:
        out.append((mf.MEDIA_TEMPLATE, plan.template.encode()))
    if plan.system:
        out.append((mf.MEDIA_SYSTEM, plan.system.encode()))
    for text in plan.license or _base_licenses(store, plan):
        out.append((mf.MEDIA_LICENSE, text.encode()))
    if plan.parameters:
        out.append((mf.MEDIA_PARAMS, go_encode(plan.parameters)))
    messages = plan.messages or _base_messages(store, plan)
    if messages:
        out.append((mf.MEDIA_MESSAGES, go_encode(messages, sort_keys=False)))
    return out


def _base_licenses(store: Store, plan: CreatePlan) -> list[str]:
    return [store.blobs.read_bytes(layer.digest, 16 << 20).decode("utf-8", "replace")
            for layer in plan.base_layers if layer.media_type == mf.MEDIA_LICENSE]


def _base_messages(store: Store, plan: CreatePlan) -> list[dict[str, Any]]:
    import json

    for layer in plan.base_layers:
        if layer.media_type == mf.MEDIA_MESSAGES:
            loaded = json.loads(store.blobs.read_bytes(layer.digest, 16 << 20))
            return loaded if isinstance(loaded, list) else []
    return []
