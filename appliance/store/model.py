"""A stored model resolved from its manifest: weights, template, system, parameters, messages.

This is what ``/api/show`` reports and what the scheduler loads.  Only small layers (config,
template, system, params, license, messages) are read into memory, each with a size cap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.api.options import stored_options
from appliance.errors import BadRequest
from appliance.store import manifests as mf
from appliance.store.blobs import BlobStore
from appliance.store.manifests import ManifestStore, StoredManifest
from appliance.store.names import Name

log = logging.getLogger(__name__)

SMALL_LAYER_LIMIT = 16 << 20


@dataclass(frozen=True)
class ModelDetails:
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": self.format,
            "family": self.family,
            "families": list(self.families) or None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass(frozen=True)
class Model:
    """Everything a stored model is made of, with blob paths for the big parts."""

    name: Name
    stored: StoredManifest
    config: dict[str, Any]
    model_path: Path | None
    adapter_paths: tuple[Path, ...] = ()
    projector_paths: tuple[Path, ...] = ()
    draft_path: Path | None = None  # a draft model for speculative decoding (Modelfile DRAFT)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: tuple[str, ...] = ()
    messages: tuple[dict[str, Any], ...] = ()

    @property
    def digest(self) -> str:
        return self.stored.digest

    @property
    def modified_at(self) -> datetime:
        return self.stored.modified_at

    @property
    def size(self) -> int:
        return self.stored.manifest.size

    @property
    def details(self) -> ModelDetails:
        return details_from_config(self.config, self.stored.manifest)


def details_from_config(config: dict[str, Any], manifest: mf.Manifest) -> ModelDetails:
    families = config.get("model_families")
    model_layer = manifest.first(mf.MEDIA_MODEL)
    return ModelDetails(
        parent_model=(model_layer.from_ or "") if model_layer else "",
        format=str(config.get("model_format") or ""),
        family=str(config.get("model_family") or ""),
        families=tuple(str(f) for f in families) if isinstance(families, list) else (),
        parameter_size=str(config.get("model_type") or ""),
        quantization_level=str(config.get("file_type") or ""),
    )


def read_config(blobs: BlobStore, manifest: mf.Manifest) -> dict[str, Any]:
    """The model's ConfigV2 JSON; an empty dict when the config layer is missing or not JSON."""
    try:
        data = json.loads(blobs.read_bytes(manifest.config.digest, SMALL_LAYER_LIMIT))
    except (OSError, ValueError, BadRequest) as exc:
        log.warning("config %s unreadable: %s", manifest.config.digest, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _text(blobs: BlobStore, layer: mf.Layer | None) -> str | None:
    if layer is None:
        return None
    return blobs.read_bytes(layer.digest, SMALL_LAYER_LIMIT).decode("utf-8", errors="replace")


def load_model(blobs: BlobStore, manifests: ManifestStore, name: Name) -> Model:
    """Resolve ``name`` into a Model (raises ModelNotFound)."""
    stored = manifests.get(name)
    manifest = stored.manifest
    params: dict[str, Any] = {}
    params_layer = manifest.first(mf.MEDIA_PARAMS)
    if params_layer is not None:
        loaded = json.loads(blobs.read_bytes(params_layer.digest, SMALL_LAYER_LIMIT) or b"{}")
        params = stored_options(loaded, f"model {stored.name.display}") if isinstance(loaded, dict) else {}
    messages: list[dict[str, Any]] = []
    messages_layer = manifest.first(mf.MEDIA_MESSAGES)
    if messages_layer is not None:
        loaded = json.loads(blobs.read_bytes(messages_layer.digest, SMALL_LAYER_LIMIT) or b"[]")
        messages = [m for m in loaded if isinstance(m, dict)] if isinstance(loaded, list) else []
    model_layer = manifest.first(mf.MEDIA_MODEL)
    draft_layer = manifest.first(mf.MEDIA_DRAFT)
    template = _text(blobs, manifest.first(mf.MEDIA_TEMPLATE) or manifest.first(mf.MEDIA_PROMPT))
    return Model(
        name=stored.name,
        stored=stored,
        config=read_config(blobs, manifest),
        model_path=blobs.path(model_layer.digest) if model_layer else None,
        adapter_paths=tuple(blobs.path(layer.digest) for layer in manifest.all_of(mf.MEDIA_ADAPTER)),
        projector_paths=tuple(blobs.path(layer.digest) for layer in manifest.all_of(mf.MEDIA_PROJECTOR)),
        draft_path=blobs.path(draft_layer.digest) if draft_layer else None,
        template=template,
        system=_text(blobs, manifest.first(mf.MEDIA_SYSTEM)),
        parameters=params,
        license=tuple(
            blobs.read_bytes(layer.digest, SMALL_LAYER_LIMIT).decode("utf-8", errors="replace")
            for layer in manifest.all_of(mf.MEDIA_LICENSE)
        ),
        messages=tuple(messages),
    )


def capabilities(model: Model, info: Any) -> list[str]:
    """What a model can do, judged like Ollama: from its GGUF, projector, template and config."""
    caps: list[str] = [c for c in model.config.get("capabilities") or [] if isinstance(c, str)]

    def add(cap: str) -> None:
        if cap not in caps:
            caps.append(cap)

    if info is not None:
        arch = info.architecture
        add("embedding" if f"{arch}.pooling_type" in info.metadata else "completion")
        if f"{arch}.vision.block_count" in info.metadata:
            add("vision")
    if model.projector_paths:
        add("vision")
    template = model.template
    if template is not None:
        if ".Tools" in template:
            add("tools")
        if ".Suffix" in template:
            add("insert")
        if ".Thinking" in template or ".Think" in template:
            add("thinking")
    elif info is not None and info.chat_template:
        jinja = info.chat_template
        if "tools" in jinja:
            add("tools")
        if "<think>" in jinja or "enable_thinking" in jinja or "reasoning_content" in jinja:
            add("thinking")
    from appliance.prompt import output
    from appliance.prompt.builtin import parser_for

    parser = parser_for(output.parser_name(model.config, template))
    if parser is not None:  # a PARSER brings what it can parse (as upstream)
        if parser.has_tool_support:
            add("tools")
        if parser.has_thinking_support:
            add("thinking")
    if model.config.get("model_family") in output.GPT_OSS_FAMILIES:
        add("thinking")
    return caps
