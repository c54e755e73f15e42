"""Importing a Hugging Face safetensors folder (llama family) by converting it to GGUF.

``safetensors`` reads the checkpoint through bounded headers and memory maps, ``tokenizer`` turns
tokenizer.json / tokenizer.model into llama.cpp's vocabulary metadata, ``llama`` writes the GGUF
(:func:`appliance.store.convert.llama.convert_safetensors`), and ``child`` runs all of it in a child
process of the server (``ollama convert-safetensors``), and ``importer`` is what /api/create uses:
uploaded blobs linked into a folder, checked, converted into a new model blob
(:class:`appliance.store.convert.importer.SafetensorsImport`).
This module imports nothing heavy: the server reaches the converter only through the child.
"""

from appliance.errors import BadRequest


class ConversionError(BadRequest):
    """A model folder that cannot be converted: unsupported, incomplete or malformed (400)."""
