"""The official ollama-python examples run unchanged against a real server with the bundled SmolLM2.

They come from the sdist of the installed ``ollama`` release (tests/fixtures/ollama_examples.py), and
call the models of Ollama's library by name (gemma4, llama3.1, deepseek-r1, qwen3, gpt-oss:20b …): each
of those names is SmolLM2 here, created from a Modelfile that bounds its replies (``num_predict``) and,
for the thinking and tool examples, wears the parser of the real family so that the capability the
example relies on is there.  SmolLM2's answers are nonsense for these tasks; what is checked is that
every example runs to its end against this server, as it does against Ollama, and prints what it
prints there.

Not run, and why: pull.py and ps.py (pull gemma4 from registry.ollama.ai: no network here; pulls are tested
against a local registry elsewhere), the multimodal and image examples (ask for an image path on stdin
and a real vision model), generate-image.py (an image generation model), web-search*.py (ollama.com
account routes, answered 403 here), systemone.py (an API of a newer Ollama than this server speaks),
gpt-oss-tools*.py (need gpt-oss's harmony tool calls from a real gpt-oss model to do anything).

llama3.1:8b (the structured-output examples' model) also gets ``repeat_penalty 1.5``: greedy SmolLM2
under their friends schema lists friends until ``num_predict`` cuts the JSON, which then does not
validate; a real llama3.1 closes the list.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.fixtures.ollama_examples import examples_dir

MODEL = "smollm2:135m"
# name the examples use -> extra Modelfile lines on top of SmolLM2
ALIASES = {
    "gemma4": "",
    "llama3.1": "",
    "llama3.1:8b": "PARAMETER num_predict 1024\nPARAMETER repeat_penalty 1.5\n",  # structured outputs: see below
    "llama3.2": "",
    "codellama:7b-code": 'TEMPLATE "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"\n',  # codellama's own
    "deepseek-r1": "PARSER deepseek3\n",
    "qwen3": "PARSER qwen3-thinking\n",
    "gpt-oss:20b": "PARSER harmony\n",
}


@pytest.fixture(scope="module")
def examples() -> Path:
    return examples_dir()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("examples"), OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    for name, extra in ALIASES.items():
        modelfile = server.home / f"{name.replace(':', '_')}.Modelfile"
        modelfile.write_text(f"FROM {MODEL}\nPARAMETER num_predict 48\nPARAMETER temperature 0\n{extra}")
        server.cli("create", name, "-f", str(modelfile))
    yield server
    server.stop()


def run(srv: Server, examples: Path, name: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(examples / name)], env={**srv.env, "OLLAMA_HOST": srv.url},
                          input=stdin, capture_output=True, text=True, timeout=600, cwd=srv.home)


@pytest.mark.parametrize(("name", "expect"), [
    ("chat.py", ""),
    ("chat-stream.py", ""),
    ("generate.py", ""),
    ("generate-stream.py", ""),
    ("async-chat.py", ""),
    ("async-generate.py", ""),
    ("list.py", "Name: gemma4:latest"),
    ("show.py", "Modelfile:"),
    ("embed.py", ""),
    ("create.py", "success"),
    ("tools.py", ""),
    ("async-tools.py", ""),
    ("multi-tool.py", "----- Prompt:"),
    ("thinking.py", "Thinking:"),
    ("thinking-generate.py", ""),
    ("thinking-levels.py", "Thinking (high)"),
    ("structured-outputs.py", ""),
    ("async-structured-outputs.py", ""),
    ("fill-in-middle.py", ""),
    ("chat-logprobs.py", "chat logprobs:"),
    ("generate-logprobs.py", "generate logprobs:"),
])
def test_example_runs_unchanged(srv: Server, examples: Path, name: str, expect: str) -> None:
    proc = run(srv, examples, name)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert expect in proc.stdout
    assert proc.stdout.strip() or name == "fill-in-middle.py"
    if "logprobs" in name:  # one line per token with its logprob, then its alternatives
        tokens = [line for line in proc.stdout.splitlines() if line.startswith("  token=")]
        alternatives = [line for line in proc.stdout.splitlines() if line.startswith("    alt -> ")]
        assert tokens and alternatives and all(" logprob=-" in t or " logprob=0.000" in t for t in tokens)


def test_chat_with_history_answers_each_line_until_stdin_ends(srv: Server, examples: Path) -> None:
    """The example loops on input() forever: two lines, two answers, then EOFError ends it."""
    proc = run(srv, examples, "chat-with-history.py", stdin="Hello\nWhat did I just say?\n")
    assert proc.stdout.count("Chat with history: ") == 3
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith("EOFError: EOF when reading a line")
