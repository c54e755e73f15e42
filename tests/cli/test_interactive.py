"""The ``ollama run`` REPL: the command loop with a fake reader and client, then a real terminal (tmux)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.api.client import ResponseError
from appliance.cli.interactive import USAGE, USAGE_SET, Interrupted, PlainHistory, Repl
from appliance.cli.run import RunOptions
from tests.cli.derived import derived_model

# --- the command loop ------------------------------------------------------------------------------


class FakeReader:
    def __init__(self, *lines: str | BaseException) -> None:
        self.lines = list(lines)
        self.history_enabled = True
        self.continuations: list[bool] = []

    def read(self, continuation: bool) -> str:
        self.continuations.append(continuation)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line


class FakeClient:
    def __init__(self, models: dict[str, dict[str, Any]] | None = None) -> None:
        self.models = models or {"m": {"capabilities": ["completion"], "parameters": "temperature 0",
                                       "template": "{{ .Prompt }}", "details": {}}}
        self.chats: list[dict[str, Any]] = []
        self.creates: list[dict[str, Any]] = []
        self.generates: list[dict[str, Any]] = []

    def show(self, model: str) -> dict[str, Any]:
        if model not in self.models:
            raise ResponseError(f"model '{model}' not found", 404)
        return self.models[model]

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.chats.append({**body, "messages": list(body["messages"])})
        yield {"message": {"role": "assistant", "content": "Hi"}, "done": False}
        yield {"message": {"role": "assistant", "content": "!"}, "done": True, "eval_count": 2,
               "eval_duration": 1_000_000_000}

    def generate(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.generates.append(body)
        yield {"response": "", "done": True}

    def create(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if "/" in body["model"]:
            raise ResponseError("invalid model name: 'a/b/c/d'", 400)
        self.creates.append(body)
        yield {"status": "success"}


def repl(*lines: str | BaseException, client: FakeClient | None = None, **opts: Any) -> tuple[Repl, FakeClient]:
    client = client or FakeClient()
    session = Repl(client, RunOptions(model="m", word_wrap=False, **opts), FakeReader(*lines),  # type: ignore[arg-type]
                   think_explicit=False)
    assert session.run() == 0
    return session, client


def test_messages_accumulate_and_clear_resets_them(capsys):
    session, client = repl("hello", "again", "/clear", "third")
    out = capsys.readouterr().out
    assert out.count("Hi!\n\n") == 3 and "Cleared session context\n" in out
    assert [m["content"] for m in client.chats[1]["messages"]] == ["hello", "Hi!", "again"]
    assert [m["content"] for m in client.chats[2]["messages"]] == ["third"]
    assert session.opts.messages[-1] == {"role": "assistant", "content": "Hi!"}


def test_multiline_input(capsys):
    session, client = repl('"""first line', "second line", 'end"""', '"""one line"""')
    assert session.reader.continuations == [False, True, True, False, False]  # type: ignore[attr-defined]
    assert client.chats[0]["messages"][0]["content"] == "first line\nsecond line\nend"
    assert client.chats[1]["messages"][-1]["content"] == "one line"


def test_set_parameter_and_show_parameters(capsys):
    _, client = repl("/set parameter num_predict 5", "/set parameter stop a b",
                     "/set parameter temperature hot", "/set parameter nope 1", "/show parameters", "hi")
    out = capsys.readouterr().out
    assert "Set parameter 'num_predict' to '5'\n" in out
    assert "Set parameter 'stop' to 'a, b'\n" in out
    assert "Couldn't set parameter: \"invalid float value 'hot' for parameter 'temperature'\"\n" in out
    assert "Couldn't set parameter: \"unknown parameter 'nope'\"\n" in out
    assert ("Model defined parameters:\n  temperature 0\n\nUser defined parameters:\n"
            f"  {'num_predict':<30} 5\n  {'stop':<30} [a b]\n\n") in out
    assert client.chats[0]["options"] == {"num_predict": 5, "stop": ["a", "b"]}


def test_set_modes(capsys):
    session, client = repl("/set verbose", "/set format json", "/set nowordwrap", "/set think", "/set think low",
                           "/set nohistory", "hi", "/set quiet", "/set noformat", "/set nothink", "/unset format",
                           "/set history", "/set bogus", "/set")
    captured = capsys.readouterr()
    for text in ("Set 'verbose' mode.", "Set format to 'json' mode.", "Set 'nowordwrap' mode.", "Set 'think' mode.",
                 "Set 'think' mode to 'low'.", "Set 'quiet' mode.", "Disabled format.", "Set 'nothink' mode.",
                 "Unknown command '/set bogus'. Type /? for help"):
        assert text + "\n" in captured.out
    assert client.chats[0]["format"] == "json" and client.chats[0]["think"] == "low"
    assert "eval rate:            2.00 tokens/s\n" in captured.err  # /set verbose
    assert 'warning: model "m" does not support thinking output\n' in captured.err
    assert captured.err.endswith(USAGE_SET)
    assert session.opts.format == "" and session.opts.think is False and session.reader.history_enabled


def test_system_message(capsys):
    session, client = repl("/set system You are   a cat.", "/show system", "/set system Be brief.", "hi",
                           '/set system """Line one', 'line two"""', "/show system", "/clear")
    out = capsys.readouterr().out
    assert out.count("Set system message.\n") == 3
    assert "You are a cat.\n\n" in out and "Line one\nline two\n\n" in out
    assert client.chats[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "hi"}]
    assert session.opts.messages == [{"role": "system", "content": "Line one\nline two"}]


def test_show_commands(capsys):
    client = FakeClient({"m": {"capabilities": ["completion"], "template": "T", "modelfile": "FROM x\n",
                               "license": "MIT", "details": {}}})
    repl("/show template", "/show license", "/show modelfile", "/show system", "/show nope", "/show info",
         client=client)
    captured = capsys.readouterr()
    assert captured.out == ("T\nMIT\nFROM x\n\nNo system message was specified for this model.\n"
                            "Unknown command '/show nope'. Type /? for help\n")
    assert "Model" in captured.err and "quantization" in captured.err


def test_help_and_unknown_commands(capsys):
    repl("/?", "/help shortcuts", "/? set", "/foo bar")
    captured = capsys.readouterr()
    assert captured.err.startswith(USAGE) and "Ctrl + d            Exit ollama (/bye)" in captured.err
    assert "/set parameter ...     Set a parameter" in captured.err
    assert captured.out == "Unknown command '/foo'. Type /? for help\n"


def test_ctrl_c_and_bye(capsys):
    session, client = repl(Interrupted(""), Interrupted("half typed"), '"""start', Interrupted("x"), "hi",
                           "/bye", "never read")
    assert capsys.readouterr().out.count("Use Ctrl + d or /bye to exit.\n") == 1
    assert client.chats[0]["messages"][0]["content"] == "hi"  # Ctrl+C dropped the open """ block
    assert session.reader.lines == ["never read"]  # type: ignore[attr-defined]


def test_load_and_save(capsys):
    client = FakeClient({"m": {"capabilities": ["completion"], "details": {}},
                         "other": {"capabilities": ["completion"], "details": {"parent_model": "m"},
                                   "messages": [{"role": "user", "content": "stored"}]}})
    session, _ = repl("hi", "/load", "/load missing", "/load other", "/set parameter seed 3",
                      "/set system Terse.", "/save saved", "/save a/b/c/d", "/save", client=client)
    out = capsys.readouterr().out
    assert "Usage:\n  /load <modelname>\n" in out and "Usage:\n  /save <modelname>\n" in out
    assert "Loading model 'missing'\nCouldn't find model 'missing'\n" in out
    assert "Loading model 'other'\n" in out and "Created new model 'saved'\n" in out
    assert "error: The model name 'a/b/c/d' is invalid\n" in out
    assert client.generates == [{"model": "other"}]
    assert client.creates == [{"model": "saved", "from": "other", "system": "Terse.", "parameters": {"seed": 3},
                               "messages": [{"role": "user", "content": "stored"},
                                            {"role": "system", "content": "Terse."}]}]
    assert session.opts.model == "other"


def test_history_file_is_ollamas_plain_format(tmp_path):
    path = tmp_path / ".ollama" / "history"
    history = PlainHistory(path)
    assert list(history.load_history_strings()) == []
    for i in range(105):
        history.append_string(f"line {i}")
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and lines[0] == "line 5" and lines[-1] == "line 104"
    assert next(iter(PlainHistory(path).load_history_strings())) == "line 104"  # newest first
    history.enabled = False
    history.append_string("secret")
    assert "secret" not in path.read_text()


# --- a real terminal -------------------------------------------------------------------------------


class Tmux:
    """One tmux server of our own, running ``ollama run`` in a pseudo-terminal we can type into."""

    def __init__(self, env: dict[str, str], command: str) -> None:
        self.socket = f"ollama-test-{os.getpid()}-{time.monotonic_ns()}"
        self.env = env
        self.tmux("new-session", "-d", "-x", "100", "-y", "50", "-s", "t", command)
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              timeout=30)
        return proc.stdout

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def wait_for(self, text: str, after: str = "", timeout: float = 60) -> str:
        """Wait until ``text`` shows up below the last ``after`` line; return what follows ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            tail = screen.rpartition(after)[2] if after else screen
            if after in screen and text in tail:
                return tail
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear after {after!r}:\n{screen}")
            time.sleep(0.1)

    def enter(self, line: str, expect: str = "") -> str:
        """Type a line and wait for ``expect``, then for the next idle prompt."""
        self.send("-l", line)
        self.send("Enter")
        prompt = ">>> " + line if not line.startswith("...") else line
        self.wait_for(expect or "\n", after=prompt)
        return self.wait_for(IDLE, after=prompt)

    def close(self) -> None:
        self.tmux("kill-server")
        if self.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)


IDLE = ">>> Send a message (/? for help)"


@pytest.fixture(scope="module")
def terse(server):
    with derived_model(server, "cli-repl-t0", temperature=0, num_predict=24) as name:
        yield name


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/test-deps.sh installs it)")
def test_interactive_session_in_a_terminal(server, terse):
    command = f"{shlex.quote(sys.executable)} -m appliance run {terse}; echo EXIT=$?; sleep 60"
    term = Tmux(server.env, command)
    try:
        term.wait_for(IDLE)
        answer = term.enter("What is the capital of France?", expect="Paris")
        assert answer.startswith("\nThe capital of France is Paris")

        assert "Set parameter 'num_predict' to '5'" in term.enter("/set parameter num_predict 5")
        shown = term.enter("/show parameters", expect="User defined parameters:")
        assert "temperature" in shown and "num_predict                    5" in shown

        term.send("-l", '"""Say')
        term.send("Enter")
        term.wait_for("... Press Enter to send", after='>>> """Say')
        term.send("-l", 'hello"""')
        term.send("Enter")
        term.wait_for(IDLE, after='... hello"""')

        saved = term.enter("/save cli-repl-saved", expect="Created new model 'cli-repl-saved'")
        assert saved
        assert "Cleared session context" in term.enter("/clear")

        term.send("C-c")
        term.wait_for("Use Ctrl + d or /bye to exit.", after=">>> /clear")

        term.send("-l", "/bye")
        term.send("Enter")
        term.wait_for("EXIT=0", after=">>> /bye")
    finally:
        term.close()
    with server.http() as http:
        info = http.post("/api/show", json={"model": "cli-repl-saved"}).json()
        http.request("DELETE", "/api/delete", json={"model": "cli-repl-saved"})
    contents = [m["content"] for m in info["messages"]]
    assert contents[:2] == ["What is the capital of France?", answer.strip().splitlines()[0]]
    assert contents[2] == "Say\nhello"
    assert "num_predict                    5" in info["parameters"]
    history = (server.home / ".ollama" / "history").read_text().splitlines()
    assert "What is the capital of France?" in history and "/bye" in history


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/test-deps.sh installs it)")
def test_ctrl_c_stops_a_reply_and_ctrl_d_exits(server, terse):
    command = (f"OLLAMA_NOHISTORY=1 {shlex.quote(sys.executable)} -m appliance run {terse}; "
               "echo EXIT=$?; sleep 60")
    term = Tmux(server.env, command)
    history = server.home / ".ollama" / "history"
    before = history.read_text() if history.exists() else ""
    try:
        term.wait_for(IDLE)
        term.enter("/set parameter num_predict 2000")
        term.send("-l", "Write a very long story about a dragon.")
        term.send("Enter")
        # Wait for the reply itself: the line below the prompt, never the placeholder of a redraw.
        deadline = time.monotonic() + 60
        while True:
            reply = term.screen().rpartition(">>> Write a very long story about a dragon.\n")[2]
            if "Send a message" not in reply and len(re.findall(r"[A-Za-z]+", reply)) >= 3:
                break
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        term.send("C-c")
        t0 = time.monotonic()
        term.wait_for(IDLE, after="a dragon.", timeout=10)
        assert time.monotonic() - t0 < 10
        term.send("C-d")
        term.wait_for("EXIT=0", after="a dragon.")
    finally:
        term.close()
    after = history.read_text() if history.exists() else ""
    assert after == before  # OLLAMA_NOHISTORY
