"""The ``ollama run`` REPL: ``>>>`` prompts, ``\"\"\"`` multi-line input, slash commands, history.

:class:`Repl` is the command loop and knows nothing about terminals; it reads lines from any object
with ``read()`` and a ``history_enabled`` switch.  :class:`LineReader` is that object on a real terminal
(prompt_toolkit for editing, Ollama's plain history file).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from prompt_toolkit.history import History

from appliance import envconfig
from appliance.api.client import Client, ResponseError
from appliance.cli.attachments import ImageFileError, candidate_paths
from appliance.cli.run import RunOptions, chat_turn, infer_think, load_or_unload, take_images

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.

"""

#: The line USAGE gains for a model that sees images.
USAGE_IMAGES = "Use /path/to/file to include .jpg, .png, or .webp images.\n"

USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking

"""

USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + g            Open default editor to compose a prompt
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit ollama (/bye)

"""

USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template

"""

USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters

"""

HISTORY_LIMIT = 100
MULTILINE = '"""'


class Interrupted(Exception):
    """Ctrl+C at the prompt; ``text`` is what had been typed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class EditRequested(Exception):
    """Ctrl+G: compose the prompt in an external editor, starting from ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Reader(Protocol):
    history_enabled: bool

    def read(self, continuation: bool) -> str:
        """One line (EOFError on Ctrl+D, Interrupted on Ctrl+C)."""
        ...


class PlainHistory(History):
    """Ollama's ``~/.ollama/history``: one entry per line, the last 100 kept, written only while enabled."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        super().__init__()
        self.path = path
        self.enabled = enabled
        self.entries: list[str] = []

    def load_history_strings(self) -> Iterable[str]:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        self.entries = [line.strip() for line in lines if line.strip()][-HISTORY_LIMIT:]
        return list(reversed(self.entries))

    def append_string(self, string: str) -> None:
        super().append_string(string)
        del self._loaded_strings[HISTORY_LIMIT:]

    def store_string(self, string: str) -> None:
        self.entries = [*self.entries, string][-HISTORY_LIMIT:]
        if self.enabled:
            self.save()

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".tmp")
            partial.write_text("".join(entry + "\n" for entry in self.entries), encoding="utf-8")
            partial.chmod(0o600)
            partial.replace(self.path)
        except OSError:
            pass  # a read-only home must not end the session


class LineReader:
    """Line editing on a terminal: ``>>>`` / ``...`` prompts with Ollama's grey placeholders."""

    def __init__(self, history_enabled: bool) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
        from prompt_toolkit.styles import Style

        self.history = PlainHistory(Path.home() / ".ollama" / "history", enabled=history_enabled)
        self.history.load_history_strings()
        self.prefill = ""
        bindings = KeyBindings()

        @bindings.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            event.app.exit(exception=Interrupted(event.current_buffer.text))

        @bindings.add("c-g")
        def _edit(event: KeyPressEvent) -> None:
            event.app.exit(exception=EditRequested(event.current_buffer.text))

        self.session: Any = PromptSession(history=self.history, key_bindings=bindings,
                                          prompt_continuation="... ", reserve_space_for_menu=0,
                                          style=Style.from_dict({"placeholder": "#8a8a8a"}))

    @property
    def history_enabled(self) -> bool:
        return self.history.enabled

    @history_enabled.setter
    def history_enabled(self, value: bool) -> None:
        self.history.enabled = value

    def read(self, continuation: bool) -> str:
        from prompt_toolkit.application import get_app
        from prompt_toolkit.formatted_text import FormattedText

        hint = "Press Enter to send" if continuation else "Send a message (/? for help)"

        def placeholder() -> FormattedText:
            # Once the line is accepted (or abandoned), it must not stay on screen with the hint.
            return FormattedText([] if get_app().is_done else [("class:placeholder", hint)])

        default, self.prefill = self.prefill, ""
        text: str = self.session.prompt("... " if continuation else ">>> ", default=default,
                                        placeholder=placeholder)
        return text


def edit_in_editor(text: str) -> str:
    """Ctrl+G: let OLLAMA_EDITOR (or $VISUAL, $EDITOR, vi) edit ``text``; return the result."""
    editor = envconfig.load().editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", prefix="ollama-prompt-", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        subprocess.run([*shlex.split(editor), f.name], check=True)
        return Path(f.name).read_text(encoding="utf-8").rstrip("\n")
    finally:
        os.unlink(f.name)


def _cut_suffix(text: str, suffix: str) -> tuple[str, bool]:
    return (text[: -len(suffix)], True) if text.endswith(suffix) else (text, False)


def _param_value(value: Any) -> str:
    """A parameter as Go's ``%v`` prints it: ``[a b]``, ``true``, ``0.7``."""
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Repl:
    """The command loop of ``ollama run`` (Ollama's ``generateInteractive``)."""

    def __init__(self, client: Client, opts: RunOptions, reader: Reader, *, think_explicit: bool) -> None:
        self.client = client
        self.opts = opts
        self.reader = reader
        self.think_explicit = think_explicit
        self.buffer = ""
        self.multiline: str | None = None  # None, "prompt" or "system"
        self.commands: tuple[tuple[tuple[str, ...], Callable[[str], bool]], ...] = (
            (("/list",), self._list),
            (("/load",), self._load),
            (("/save",), self._save),
            (("/clear",), self._clear),
            (("/set",), self._set),
            (("/unset",), self._unset),
            (("/show",), self._show),
            (("/help", "/?"), self._help),
            (("/exit", "/bye"), lambda _line: False),
        )

    def run(self) -> int:
        while True:
            try:
                line = self.reader.read(self.multiline is not None)
            except EOFError:
                return 0
            except Interrupted as interrupt:
                if not interrupt.text:
                    print("Use Ctrl + d or /bye to exit.")
                self.buffer, self.multiline = "", None
                continue
            except EditRequested as request:
                self._edit(request.text)
                continue
            if not self.handle(line):
                return 0

    def _edit(self, text: str) -> None:
        try:
            content = edit_in_editor(text)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return
        if content.strip() and isinstance(self.reader, LineReader):
            self.reader.prefill = content

    def handle(self, line: str) -> bool:
        """Act on one line of input; False ends the session."""
        if self.multiline is not None:
            before, closed = _cut_suffix(line, MULTILINE)
            self.buffer += before
            if not closed:
                self.buffer += "\n"
                return True
            if self.multiline == "system":
                self._set_system(self.buffer, replace_last=False)
                self.buffer = ""
            self.multiline = None
        elif line.startswith(MULTILINE):
            text, closed = _cut_suffix(line[len(MULTILINE):], MULTILINE)
            self.buffer += text
            if not closed:
                self.buffer += "\n"
                self.multiline = "prompt"
        elif line.startswith("/"):
            for prefixes, command in self.commands:
                if line.startswith(prefixes):
                    return command(line)
            if not self._starts_with_image_path(line):
                print(f"Unknown command '{line.split()[0]}'. Type /? for help")
                return True
            self.buffer += line
        else:
            self.buffer += line
        if self.buffer and self.multiline is None:
            text, self.buffer = self.buffer, ""
            self._send(text)
        return True

    def _starts_with_image_path(self, line: str) -> bool:
        """A line such as ``/home/me/cat.png what is this?`` is a prompt, not a command (vision models)."""
        first = line.split()[0]
        return self.opts.multimodal and any(path.startswith(first) for path in candidate_paths(line))

    def _send(self, text: str) -> None:
        message: dict[str, Any] = {"role": "user", "content": text}
        if self.opts.multimodal:
            try:
                message["content"], images = take_images(text)
            except ImageFileError:
                return  # take_images said which file; nothing is sent, the session goes on
            if images:
                message["images"] = images  # kept in the conversation: every later turn sends them again
        self.opts.messages.append(message)
        try:
            reply = chat_turn(self.client, self.opts)
        except ResponseError as exc:
            if "does not support thinking" in str(exc) or "invalid think value" in str(exc):
                print(f"error: {exc}")
                return
            if exc.status == 400 and "images" in message:
                # The server refused an image: keeping the message would make every later turn fail too.
                self.opts.messages.remove(message)
                print(f"error: {exc}")
                return
            raise
        if reply is not None:
            self.opts.messages.append(reply)

    def _set_system(self, text: str, *, replace_last: bool) -> None:
        self.opts.system = text
        message = {"role": "system", "content": text}
        if replace_last and self.opts.messages and self.opts.messages[-1].get("role") == "system":
            self.opts.messages[-1] = message
        else:
            self.opts.messages.append(message)
        print("Set system message.")

    # --- commands: each returns False to end the session ------------------------------------------

    def _list(self, line: str) -> bool:
        from appliance.cli.models import run_list

        run_list(line.split()[1:])
        return True

    def _load(self, line: str) -> bool:
        args = line.split()
        if len(args) != 2:
            print("Usage:\n  /load <modelname>")
            return True
        previous, opts = self.opts, self.opts.copy()
        opts.model, opts.messages, opts.loaded_messages = args[1], [], []
        print(f"Loading model '{opts.model}'")
        try:
            info = self.client.show(opts.model)
            opts.apply_show(info)
            opts.think = infer_think(list(info.get("capabilities") or []), opts.think, self.think_explicit)
            self.opts = opts
            load_or_unload(self.client, opts.model, opts.keep_alive, opts.think)
        except ResponseError as exc:
            if "not found" in str(exc):
                print(f"Couldn't find model '{opts.model}'")
                self.opts = previous
            elif "does not support thinking" in str(exc):
                print(f"error: {exc}")
            else:
                raise
        return True

    def _save(self, line: str) -> bool:
        args = line.split()
        if len(args) != 2:
            print("Usage:\n  /save <modelname>")
            return True
        body: dict[str, Any] = {"model": args[1], "from": self.opts.model}
        if self.opts.system:
            body["system"] = self.opts.system
        if self.opts.options:
            body["parameters"] = dict(self.opts.options)
        messages = [*self.opts.loaded_messages, *self.opts.messages]
        if messages:
            body["messages"] = messages
        try:
            for _ in self.client.create(body):
                pass
        except ResponseError as exc:
            if "invalid model name" in str(exc):
                print(f"error: The model name '{args[1]}' is invalid")
                return True
            raise
        print(f"Created new model '{args[1]}'")
        return True

    def _clear(self, _line: str) -> bool:
        self.opts.messages = []
        if self.opts.system:
            self.opts.messages.append({"role": "system", "content": self.opts.system})
        print("Cleared session context")
        return True

    def _set(self, line: str) -> bool:
        args = line.split()
        if len(args) < 2:
            sys.stderr.write(USAGE_SET)
            return True
        what, opts = args[1], self.opts
        if what in ("history", "nohistory"):
            self.reader.history_enabled = what == "history"
        elif what in ("wordwrap", "nowordwrap"):
            opts.word_wrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            opts.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what in ("think", "nothink"):
            level = args[2] if what == "think" and len(args) > 2 else ""
            opts.think = level or (what == "think")
            self.think_explicit = True
            self._warn_without_thinking()
            print(f"Set 'think' mode to '{level}'." if level else f"Set '{what}' mode.")
        elif what == "format":
            if len(args) < 3 or args[2] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                opts.format = "json"
                print("Set format to 'json' mode.")
        elif what == "noformat":
            opts.format = ""
            print("Disabled format.")
        elif what == "parameter":
            self._set_parameter(args[2:])
        elif what == "system":
            self._set_system_command(args[2:])
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")
        return True

    def _unset(self, line: str) -> bool:
        args = line.split()
        if args[1:] == ["format"]:
            return self._set("/set noformat")
        print("Usage:\n  /unset format")
        return True

    def _set_parameter(self, args: list[str]) -> None:
        from appliance.api.options import parse_parameter
        from appliance.errors import InvalidParameter
        from appliance.prompt.gotemplate_funcs import go_quote

        if len(args) < 2:
            sys.stderr.write(USAGE_PARAMETERS)
            return
        name, values = args[0], args[1:]
        try:
            parsed = [parse_parameter(name, value) for value in values]
        except InvalidParameter as exc:
            print(f"Couldn't set parameter: {go_quote(str(exc))}")
            return
        print(f"Set parameter '{name}' to '{', '.join(values)}'")
        self.opts.options[name] = parsed if name == "stop" else parsed[0]

    def _set_system_command(self, args: list[str]) -> None:
        if not args:
            sys.stderr.write(USAGE_SET)
            return
        text = " ".join(args)
        if text.startswith(MULTILINE):
            text, closed = _cut_suffix(text[len(MULTILINE):], MULTILINE)
            if not closed:
                self.multiline = "system"
                self.buffer = text + "\n" if text else ""
                return
        self._set_system(text, replace_last=True)

    def _warn_without_thinking(self) -> None:
        try:
            info = self.client.show(self.opts.model)
        except ResponseError:
            return
        if "thinking" not in (info.get("capabilities") or []):
            sys.stderr.write(f'warning: model "{self.opts.model}" does not support thinking output\n')

    def _show(self, line: str) -> bool:
        args = line.split()
        if len(args) < 2:
            sys.stderr.write(USAGE_SHOW)
            return True
        try:
            info = self.client.show(self.opts.model)
        except ResponseError:
            print("error: couldn't get model")
            raise
        what, opts = args[1], self.opts
        if what == "info":
            from appliance.cli.models import format_show

            sys.stderr.write(format_show(info) + "\n")
        elif what == "license":
            print(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(info.get("modelfile") or "")
        elif what == "parameters":
            self._show_parameters(str(info.get("parameters") or ""))
        elif what == "system":
            system = opts.system or info.get("system") or ""
            print(system + "\n" if system else "No system message was specified for this model.")
        elif what == "template":
            print(info.get("template") or "No prompt template was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")
        return True

    def _show_parameters(self, model_parameters: str) -> None:
        print("Model defined parameters:")
        if model_parameters:
            for row in model_parameters.split("\n"):
                print(f"  {row}")
        else:
            print("  No additional parameters were specified for this model.")
        print()
        if self.opts.options:
            print("User defined parameters:")
            for name, value in self.opts.options.items():
                print(f"  {name:<30} {_param_value(value)}")
            print()

    def _help(self, line: str) -> bool:
        args = line.split()
        if len(args) < 2:
            sys.stderr.write(USAGE[:-1] + USAGE_IMAGES + "\n" if self.opts.multimodal else USAGE)
        elif args[1] in ("set", "/set"):
            sys.stderr.write(USAGE_SET)
        elif args[1] in ("show", "/show"):
            sys.stderr.write(USAGE_SHOW)
        elif args[1] in ("shortcut", "shortcuts"):
            sys.stderr.write(USAGE_SHORTCUTS)
        return True


def run_interactive(client: Client, opts: RunOptions, *, think_explicit: bool) -> int:
    """The REPL on this terminal, until /bye or Ctrl+D."""
    reader = LineReader(history_enabled=not envconfig.load().nohistory)
    return Repl(client, opts, reader, think_explicit=think_explicit).run()
