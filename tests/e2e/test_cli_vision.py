"""``ollama run`` with image paths, against a real server with SmolLM2 and the tiny random projector.

The answers are nonsense; what is checked is that an image named in a prompt reaches the runner: the
``prompt_eval_count`` the server reports (``--verbose``, ``/set verbose``) equals the count of the prompt
the CLI should have sent, computed in process with the same model and projector.  A count with an image
differs from the text alone by the image's tokens, so an image left out, a path left in the text, or an
image not sent again in a later turn all show as a wrong count.
"""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.api import images as image_files
from appliance.api.client import Client
from appliance.cli.interactive import USAGE_IMAGES, Repl
from appliance.cli.run import RunOptions
from appliance.prompt import render
from appliance.server import image_prompt
from tests.cli.test_interactive import IDLE, Tmux
from tests.conftest import Server
from tests.fixtures.tiny_projector import tiny_projector_tokens
from tests.fixtures.vision_images import PromptCounter, png

TEXT_MODEL = "smol-text"
MODEL = "smol-eyes"
N_IMAGE = tiny_projector_tokens()
PARAMETERS = "PARAMETER temperature 0\nPARAMETER num_predict 4\n"


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path,
                  tiny_projector_gguf: Path) -> Iterator[Server]:
    """A text model and a vision model (the same model plus the projector), both greedy and short."""
    server = Server(tmp_path_factory.mktemp("cli-vision"), OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    for name, extra in ((TEXT_MODEL, ""), (MODEL, f"FROM {tiny_projector_gguf}\n")):
        path = server.home / f"{name}.Modelfile"
        path.write_text("FROM smollm2:135m\n" + extra + PARAMETERS)
        server.cli("create", name, "-f", str(path))
    pics = server.home / "my pics"
    pics.mkdir()
    (pics / "a cat.png").write_bytes(png(1))
    (pics / "b.png").write_bytes(png(2))
    (pics / "notes.png").write_text("not a picture\n")
    (pics / "broken.png").write_bytes(png(3)[:200])  # a PNG's signature, then nothing: the server refuses it
    (pics / "folder.png").mkdir()
    yield server
    server.stop()


class Counter:
    """Tokens of a chat or a one-shot prompt as the runner sees it: rendered with the model's template
    (and its SYSTEM, if it has one), images in place."""

    def __init__(self, tokens: PromptCounter, show: dict[str, Any]) -> None:
        self.tokens = tokens
        self.template = str(show["template"])
        self.system = str(show.get("system") or "")

    def chat(self, messages: list[dict[str, Any]]) -> int:
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}, *messages]
        tagged, _ = image_prompt.tag_messages(messages)
        pngs = [base64.b64decode(data) for m in messages for data in m.get("images") or []]
        decoded = [image_files.decode(data, "test") for data in pngs]
        prompt, sent = image_prompt.place(render.render_go(self.template, tagged, None, None), decoded)
        assert len(sent) == len(pngs)
        return self.tokens.count(prompt, pngs)[0]

    def generate(self, prompt: str, pngs: list[bytes]) -> int:
        """A one-shot prompt renders as a chat of one user message."""
        message: dict[str, Any] = {"role": "user", "content": prompt}
        return self.chat([{**message, "images": [_b64(p) for p in pngs]}] if pngs else [message])


@pytest.fixture(scope="module")
def count(vision_server: Server, smollm2_gguf: Path, tiny_projector_gguf: Path) -> Iterator[Counter]:
    with vision_server.http() as http:
        show = http.post("/api/show", json={"model": MODEL}).json()
    tokens = PromptCounter(smollm2_gguf, tiny_projector_gguf)
    yield Counter(tokens, show)
    tokens.close()


def _prompt_counts(stderr: str) -> list[int]:
    return [int(n) for n in re.findall(r"^prompt eval count: +(\d+) token\(s\)$", stderr, re.M)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- one-shot --------------------------------------------------------------------------------------


def test_one_shot_sends_the_images_a_prompt_names(vision_server: Server, count: Counter) -> None:
    # an escaped space and a quoted path under ~ (HOME is the server's folder), relative to the cwd
    proc = vision_server.cli("run", MODEL, "--verbose", "Compare ./my\\ pics/a\\ cat.png with '~/my pics/b.png'",
                             input="")
    assert proc.stderr.startswith(f"Added image './my pics/a cat.png'\n"
                                  f"Added image '{vision_server.home}/my pics/b.png'\n"), proc.stderr
    [with_images] = _prompt_counts(proc.stderr)
    assert with_images == count.generate("Compare  with", [png(1), png(2)])
    [text_only] = _prompt_counts(vision_server.cli("run", MODEL, "--verbose", "Compare  with", input="").stderr)
    assert with_images - text_only >= 2 * N_IMAGE


def test_one_shot_on_a_text_model_leaves_the_path_in_the_prompt(vision_server: Server, count: Counter) -> None:
    prompt = "Describe ./my\\ pics/a\\ cat.png"
    proc = vision_server.cli("run", TEXT_MODEL, "--verbose", prompt, input="")
    assert "Added image" not in proc.stderr
    assert _prompt_counts(proc.stderr) == [count.generate(prompt, [])]


def test_one_shot_with_a_file_that_is_no_image_is_an_error(vision_server: Server) -> None:
    proc = vision_server.cli("run", MODEL, "Describe ./my\\ pics/notes.png", input="", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    reason = "invalid file type: text/plain; charset=utf-8 (./my pics/notes.png is not a PNG, JPEG or WebP image)"
    assert proc.stderr == f'Couldn\'t process file: "{reason}"\nError: {reason}\n'


# --- the REPL --------------------------------------------------------------------------------------


class ScriptedReader:
    """Typed lines, one per prompt; Ctrl+D after the last."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        self.history_enabled = False

    def read(self, continuation: bool) -> str:
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


def _repl(server: Server, model: str, *lines: str) -> Repl:
    """Run a REPL session on ``model`` with a real client, as ``ollama run`` starts one."""
    client = Client(server.url)
    opts = RunOptions(model=model, word_wrap=False)
    opts.apply_show(client.show(model))
    session = Repl(client, opts, ScriptedReader(*lines), think_explicit=False)
    try:
        assert session.run() == 0
    finally:
        client.close()
    return session


def test_repl_keeps_images_in_the_conversation(vision_server: Server, count: Counter,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cat = vision_server.home / "my pics" / "a cat.png"
    session = _repl(vision_server, MODEL, "/set verbose", f"{cat} What is this?", "And now?")
    err = capsys.readouterr().err
    assert err.count(f"Added image '{cat}'\n") == 1
    messages = session.opts.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0] == {"role": "user", "content": "What is this?", "images": [_b64(png(1))]}
    first, second = _prompt_counts(err)
    assert first == count.chat(messages[:1])
    # the second turn sends the first turn's image again, as Ollama's REPL does
    assert second == count.chat(messages[:3])
    without_image = [{k: v for k, v in m.items() if k != "images"} for m in messages[:3]]
    assert second - count.chat(without_image) >= N_IMAGE


def test_repl_load_switches_image_paths_on_and_off(vision_server: Server, count: Counter,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pics = vision_server.home / "my pics"
    cat, missing = pics / "a cat.png", pics / "missing.png"
    escaped = str(cat).replace(" ", "\\ ")
    session = _repl(vision_server, TEXT_MODEL, "/set verbose", "/?", f"Describe {escaped}",
                    f"/load {MODEL}", "/?", f"Describe {pics}/folder.png", f"Describe {pics}/notes.png",
                    f"Describe {missing}", "/clear", f"Describe {escaped}",
                    f"/load {TEXT_MODEL}", f"{cat} again", "/?")
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    # the text model: no hint, the path is text; then the vision model: the hint, the image
    assert err.count(USAGE_IMAGES) == 1 and err.count("Added image") == 1
    assert err.index(USAGE_IMAGES) > err.index("Available Commands:")
    assert f"Couldn't process file: \"read {pics}/folder.png: is a directory\"\n" in err
    assert (f"Couldn't process file: \"invalid file type: text/plain; charset=utf-8 ({pics}/notes.png is not a "
            "PNG, JPEG or WebP image)\"\n") in err
    assert f"Added image '{cat}'\n" in err
    assert f"Loading model '{MODEL}'\n" in out and f"Loading model '{TEXT_MODEL}'\n" in out
    # back on the text model, a line starting with a path is an unknown command again (as in Ollama)
    assert out.endswith(f"Unknown command '{str(cat).split()[0]}'. Type /? for help\n")
    assert session.opts.model == TEXT_MODEL and not session.opts.multimodal
    # three turns reached the server: the two bad files sent nothing and were not kept
    counts = _prompt_counts(err)
    assert counts == [
        count.chat([{"role": "user", "content": f"Describe {escaped}"}]),
        count.chat([{"role": "user", "content": f"Describe {missing}"}]),
        count.chat([{"role": "user", "content": "Describe", "images": [_b64(png(1))]}]),
    ]


def test_repl_goes_on_when_the_server_refuses_an_image(vision_server: Server, count: Counter,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    broken = vision_server.home / "my pics" / "broken.png"
    session = _repl(vision_server, MODEL, "/set verbose", f"Describe {broken}", "Hello")
    captured = capsys.readouterr()
    assert f"Added image '{broken}'\n" in captured.err
    [error] = [line for line in captured.out.splitlines() if line.startswith("error: ")]
    assert "image" in error
    # the refused message was dropped, so the next turn is not refused again
    assert [m["role"] for m in session.opts.messages] == ["user", "assistant"]
    assert _prompt_counts(captured.err) == [count.chat([{"role": "user", "content": "Hello"}])]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/test-deps.sh installs it)")
def test_repl_in_a_terminal_takes_an_image_path(vision_server: Server) -> None:
    cat = vision_server.home / "my pics" / "a cat.png"
    command = f"{shlex.quote(sys.executable)} -m appliance run {MODEL}; echo EXIT=$?; sleep 60"
    term = Tmux(vision_server.env, command)
    try:
        term.wait_for(IDLE)
        term.enter("/set verbose")
        with_image = term.enter(f"'{cat}' What is this?", expect="eval rate:")
        assert f"Added image '{cat}'" in with_image
        term.enter("/clear")
        text_only = term.enter("What is this?", expect="eval rate:")
        assert "Added image" not in text_only
        counts = [_prompt_counts(text) for text in (with_image, text_only)]
        assert counts[0][0] - counts[1][0] >= N_IMAGE
        term.send("-l", "/bye")
        term.send("Enter")
        term.wait_for("EXIT=0", after=">>> /bye")
    finally:
        term.close()


def test_show_prints_the_projector(vision_server: Server) -> None:
    with vision_server.http() as http:
        projector = http.post("/api/show", json={"model": MODEL}).json()["projector_info"]
    from appliance.store.gguf import parameter_size_label

    printed = vision_server.cli("show", MODEL).stdout
    section = printed.split("  Projector\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in section.splitlines()]
    assert rows == [["architecture", "clip"],
                    ["parameters", parameter_size_label(projector["general.parameter_count"])],
                    ["embedding", "length", "64"], ["dimensions", "576"]]
    assert printed.index("  Capabilities\n") < printed.index("  Projector\n") < printed.index("  Parameters\n")
    assert "  Projector\n" not in vision_server.cli("show", TEXT_MODEL).stdout
