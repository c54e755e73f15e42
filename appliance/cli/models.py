"""``ollama create | list | show | cp | rm``: model management through the HTTP API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from appliance.api.client import Client
from appliance.cli.format import human_bytes, human_time, table
from appliance.cli.progress import StatusPrinter


def run_list(filters: list[str]) -> int:
    with Client() as client:
        models = client.list()
    rows = []
    for m in models:
        name = m.get("name") or m.get("model") or ""
        if filters and not any(name.startswith(f) for f in filters):
            continue
        rows.append([name, str(m.get("digest", ""))[:12], human_bytes(int(m.get("size") or 0)),
                     human_time(m.get("modified_at"))])
    print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def run_copy(source: str, destination: str) -> int:
    with Client() as client:
        client.copy(source, destination)
    print(f"copied '{source}' to '{destination}'")
    return 0


def run_remove(models: list[str]) -> int:
    with Client() as client:
        for name in models:
            client.delete(name)
            print(f"deleted '{name}'")
    return 0


def _section(title: str, rows: list[list[str]]) -> str:
    width = max(len(r) for r in rows) + 1 if rows else 0
    padded = [[""] + r + [""] * (width - 1 - len(r)) for r in rows]
    body = table([""] * width, padded).splitlines()[1:] if rows else []
    return "\n".join([f"  {title}", *body, ""])


def _fmt_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_show(info: dict[str, Any], verbose: bool = False) -> str:
    """The default ``ollama show`` report: Model, Capabilities, Parameters, System, License."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = model_info.get("general.architecture") or details.get("family") or ""
    rows = [["architecture", str(arch)]] if arch else []
    params = details.get("parameter_size")
    if params:
        rows.append(["parameters", str(params)])
    for label, key in (("context length", "context_length"), ("embedding length", "embedding_length")):
        value = model_info.get(f"{arch}.{key}")
        if value is not None:
            rows.append([label, _fmt_number(value)])
    rows.append(["quantization", str(details.get("quantization_level", ""))])
    if info.get("requires"):
        rows.append(["requires", str(info["requires"])])
    sections = [_section("Model", rows)]
    if info.get("capabilities"):
        sections.append(_section("Capabilities", [[c] for c in info["capabilities"]]))
    if info.get("projector_info"):
        sections.append(_section("Projector", _projector_rows(info["projector_info"])))
    if info.get("parameters"):
        param_rows = [line.split(None, 1) for line in str(info["parameters"]).splitlines() if line.strip()]
        sections.append(_section("Parameters", [[r[0], r[1] if len(r) > 1 else ""] for r in param_rows]))
    if verbose and model_info:
        meta = [[k, _short_value(model_info[k])] for k in sorted(model_info)]
        sections.append(_section("Metadata", meta))
    for title, key in (("System", "system"), ("License", "license")):
        text = str(info.get(key) or "").strip()
        if text:
            lines = text.splitlines()
            shown = lines if verbose else lines[:2]
            rows = [[line[:100]] for line in shown]
            if len(lines) > len(shown):
                rows.append(["..."])
            sections.append(_section(title, rows))
    return "\n".join(sections)


def _projector_rows(projector: dict[str, Any]) -> list[list[str]]:
    """Upstream's Projector section: architecture, parameters, embedding length, dimensions."""
    from appliance.store.gguf import parameter_size_label

    arch = str(projector.get("general.architecture") or "")
    rows = [["architecture", arch]] if arch else []
    count = projector.get("general.parameter_count")
    if isinstance(count, int | float):
        rows.append(["parameters", parameter_size_label(int(count))])
    for label, key in (("embedding length", "embedding_length"), ("dimensions", "projection_dim")):
        # a vision projector's keys, else an audio encoder's (Ollama looks for both)
        values = (projector.get(f"{arch}.{modality}.{key}") for modality in ("vision", "audio"))
        value = next((v for v in values if isinstance(v, int | float)), None)
        if value is not None:
            rows.append([label, _fmt_number(value)])
    return rows


def _short_value(value: Any) -> str:
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value[:3])
        return f"[{text}{', ...' if len(value) > 3 else ''}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _fmt_number(value)


def run_show(model: str, which: str | None, verbose: bool) -> int:
    with Client() as client:
        info = client.show(model, verbose=verbose)
    if which is None:
        print(format_show(info, verbose))
        return 0
    text = info.get(which) or ""
    if which == "license" and not text:
        text = ""
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _local_file(value: str, base_dir: Path) -> Path | None:
    """The local file or folder a FROM/ADAPTER value names, if it names one."""
    candidate = Path(os.path.expanduser(value))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return candidate if candidate.exists() else None


def _with_split_siblings(path: Path) -> list[Path]:
    """A GGUF named as the first of llama.cpp's split shards (``name-00001-of-00003.gguf``) and its
    siblings, found by that naming pattern; any other file alone.  (Our extension: upstream's client
    takes a split GGUF only as the folder that holds it.)"""
    from appliance.store.split import parse_split_name, split_name

    named = parse_split_name(path.name)
    if named is None or named[2] == 1:
        return [path]
    prefix, index, count = named
    if index != 1:
        raise SystemExit(f"Error: {path.name} is shard {index} of {count} of a split GGUF; FROM takes the "
                         f"first shard ({split_name(prefix, 1, count)}) or the folder that holds them")
    shards = [path.with_name(split_name(prefix, i, count)) for i in range(1, count + 1)]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise SystemExit(f"Error: split GGUF {path.name} is incomplete: {len(missing)} of its {count} shards "
                         f"are not next to it ({shown})")
    return shards


def _upload(client: Client, path: Path, status: StatusPrinter) -> dict[str, str]:
    """Hash and upload a local GGUF (with its sibling shards when it is the first of a split GGUF),
    every GGUF in a folder, or a safetensors model folder (its weights, JSON files, tokenizer.model
    and chat templates, as upstream's client sends them); return {file name: digest}."""
    from appliance.store.blobs import digest_of_file

    if not path.is_dir():
        files = _with_split_siblings(path)
    elif any(path.glob("*.safetensors")):
        files = sorted(f for pattern in ("*.safetensors", "*.json", "tokenizer.model", "*.jinja")
                       for f in path.glob(pattern) if f.is_file())
    else:
        files = sorted(path.glob("*.gguf"))
    if not files:
        raise SystemExit(f"Error: no GGUF or safetensors files found in {path}")
    out: dict[str, str] = {}
    for file in files:
        digest, _size = digest_of_file(file)
        if not client.has_blob(digest):
            status.update(f"copying file {digest} 0%")
            client.push_blob(digest, file)
        status.update(f"copying file {digest} 100%")
        out[file.name] = digest
    return out


def _draft_fields(drafts: list[str], model_file: Path | None, base_dir: Path, client: Client,
                  status: StatusPrinter) -> dict[str, Any]:
    """``draft_files`` for a DRAFT naming a local GGUF (uploaded), ``draft`` for one naming a model."""
    files: dict[str, str] = {}
    names: list[str] = []
    for draft in drafts:
        local = _local_file(draft, base_dir)
        if local is None:
            if draft.startswith(("/", ".", "~")) or "\\" in draft:
                raise SystemExit(f"Error: draft {draft!r} not found")
            names.append(draft)
            continue
        if model_file is not None and local.resolve() == model_file.resolve():  # as upstream refuses it
            raise SystemExit(f"Error: DRAFT must not reference the same local path as FROM: {draft}")
        files.update(_upload(client, local, status))
    if len(names) + bool(files) > 1:
        raise SystemExit("Error: only one DRAFT model is supported")
    return {"draft_files": files} if files else {"draft": names[0]} if names else {}


def build_create_request(model: str, modelfile_path: Path, quantize: str | None, client: Client,
                         status: StatusPrinter) -> dict[str, Any]:
    """Turn a Modelfile into an /api/create body, uploading the local files it references."""
    from appliance.store.modelfile import decode_modelfile, parse_modelfile

    parsed = parse_modelfile(decode_modelfile(modelfile_path.read_bytes()))
    for warning in parsed.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    fields = parsed.to_create_fields()
    base_dir = modelfile_path.parent
    body: dict[str, Any] = {"model": model}
    status.update("gathering model components")
    source = fields.get("from") or ""
    local = _local_file(source, base_dir)
    if local is not None:
        body["files"] = _upload(client, local, status)
    else:
        body["from"] = source
    for more in parsed.values("from")[1:]:  # a vision model's projector (mmproj GGUF), as upstream
        projector = _local_file(more, base_dir)
        if projector is None or projector.is_dir():
            raise SystemExit(f"Error: {more!r} is not a file: a second FROM names a projector GGUF")
        body["files"] = {**body.get("files", {}), **_upload(client, projector, status)}
    adapters: dict[str, str] = {}
    for adapter in fields.get("adapters") or []:
        local_adapter = _local_file(adapter, base_dir)
        if local_adapter is None:
            raise SystemExit(f"Error: adapter {adapter!r} not found")
        adapters.update(_upload(client, local_adapter, status))
    if adapters:
        body["adapters"] = adapters
    body.update(_draft_fields(fields.get("drafts") or [], local, base_dir, client, status))
    for key in ("template", "system", "renderer", "parser", "parameters", "messages", "requires", "license"):
        if fields.get(key):
            body[key] = fields[key]
    if quantize:
        body["quantize"] = quantize
    return body


def run_create(model: str, file: str | None, quantize: str | None) -> int:
    path = Path(file or "Modelfile")
    if not path.is_file():
        sys.stderr.write(f"Error: no Modelfile found at {str(path)!r}; pass one with -f\n")
        return 1
    with Client() as client, StatusPrinter() as status:
        body = build_create_request(model, path.resolve(), quantize, client, status)
        for item in client.create(body):
            status.show(item)
    return 0
