"""``ollama run``: options, the one-shot answer, a chat turn, and how a streamed reply is displayed.

The REPL lives in :mod:`appliance.cli.interactive`; this module holds what both share.  As in Ollama, a
one-shot prompt goes through ``/api/generate``, the REPL through ``/api/chat``, and an empty
``/api/generate`` loads a model (or unloads it, with ``keep_alive`` 0).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import sys
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from appliance.api.client import Client, ResponseError

# Ollama's terminal colours (readline/types.go).
GREY = "\x1b[38;5;245m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"

THINK_VALUES: dict[str, bool | str] = {
    "true": True, "false": False, "high": "high", "medium": "medium", "low": "low",
}


@dataclass
class RunOptions:
    """Everything a run or a REPL session sends with each request (Ollama's ``runOptions``)."""

    model: str
    parent_model: str = ""
    loaded_messages: list[dict[str, Any]] = field(default_factory=list)  # the model's MESSAGEs
    messages: list[dict[str, Any]] = field(default_factory=list)  # this session's conversation
    prompt: str = ""
    word_wrap: bool = True
    format: str = ""
    system: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: str | int | None = None  # as sent on the wire: a Go duration string, or -1
    think: bool | str | None = None
    hide_thinking: bool = False
    verbose: bool = False
    multimodal: bool = False  # image paths in a prompt are sent as images

    def copy(self) -> RunOptions:
        return dataclasses.replace(self, loaded_messages=list(self.loaded_messages),
                                   messages=list(self.messages), options=dict(self.options))

    def apply_show(self, info: dict[str, Any]) -> None:
        """Take what ``/api/show`` says about the model: its parent, its stored MESSAGEs, and whether it
        sees images (Ollama's CLI also trusts a projector or vision metadata, as older servers report
        no capabilities)."""
        self.parent_model = str((info.get("details") or {}).get("parent_model") or "")
        self.loaded_messages = list(info.get("messages") or [])
        self.multimodal = ("vision" in (info.get("capabilities") or []) or bool(info.get("projector_info"))
                           or any(".vision." in key for key in info.get("model_info") or {}))

    def request(self, **fields: Any) -> dict[str, Any]:
        """A generate/chat body for this session; ``fields`` supplies prompt or messages."""
        body: dict[str, Any] = {"model": self.model, **fields}
        wire_format = format_value(self.format)
        if wire_format is not None:
            body["format"] = wire_format
        if self.options:
            body["options"] = dict(self.options)
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        if self.think is not None:
            body["think"] = self.think
        return body


# --- flags -----------------------------------------------------------------------------------------


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``0s``, ``850µs``, ``1.5s``, ``2m3.25s``, ``1h0m0s``."""
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 10**9:
        unit, scale = ("µs", 10**3) if ns < 10**6 else ("ms", 10**6)
        return sign + _decimal(ns, scale) + unit
    seconds = ns // 10**9
    minutes, hours = seconds // 60, seconds // 3600
    text = _decimal(ns % (60 * 10**9), 10**9) + "s"
    if minutes:
        text = f"{minutes % 60}m" + text
    if hours:
        text = f"{hours}h" + text
    return sign + text


def _decimal(value: int, scale: int) -> str:
    whole, rest = divmod(value, scale)
    digits = len(str(scale)) - 1
    fraction = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{fraction}" if fraction else str(whole)


def keep_alive_value(text: str) -> str | int:
    """``--keepalive`` parsed as Go's ``time.ParseDuration`` and re-encoded as Ollama's client sends it."""
    from appliance.envconfig import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        raise SystemExit(f'Error: time: invalid duration "{text}"') from None
    return -1 if seconds < 0 else go_duration(round(seconds * 1e9))


def think_value(text: str) -> bool | str:
    """``--think`` / ``--think=VALUE``: true, false, high, medium or low."""
    if text == "":
        return True
    if text not in THINK_VALUES:
        raise SystemExit(f'Error: invalid value for --think: "{text}" (must be true, false, high, medium, '
                         "or low)")
    return THINK_VALUES[text]


def format_value(text: str) -> Any:
    """``--format``: "json", or a JSON schema given inline; None when not set."""
    if not text:
        return None
    if text == "json":
        return "json"
    try:
        return json.loads(text)
    except ValueError:
        raise SystemExit(f'Error: invalid format {text!r}: use "json" or a JSON schema') from None


def infer_think(capabilities: list[str], think: bool | str | None, explicit: bool) -> bool | str | None:
    """The user's choice if they made one; otherwise think whenever the model can."""
    if explicit:
        return think
    return True if "thinking" in capabilities else None


# --- display ---------------------------------------------------------------------------------------


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _text_width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


class ReplyPrinter:
    """Writes a streamed reply as it arrives: thinking between "Thinking..." and "...done thinking.",
    then the answer; with word wrap, a word that would cross the right margin is moved to the next line.
    """

    def __init__(self, out: TextIO, *, word_wrap: bool, hide_thinking: bool = False,
                 width: int | None = None, color: bool | None = None) -> None:
        self.out = out
        self.color = out.isatty() if color is None else color
        self.width = width if width is not None else _terminal_width(out)
        self.word_wrap = word_wrap and self.width >= 10
        self.hide_thinking = hide_thinking
        self.role = "assistant"
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._thinking_open = False
        self._column = 0
        self._word = ""

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    def feed(self, content: str = "", thinking: str = "", tool_calls: list[Any] | None = None) -> None:
        if thinking and not self.hide_thinking:
            if not self._thinking_open:
                self.out.write(self._styled("Thinking...\n", after=GREY))
                self._thinking_open = True
            self._thinking.append(thinking)
            self._display(thinking)
        if self._thinking_open and (content or tool_calls):
            if not self.thinking.endswith("\n"):
                self.out.write("\n")
            self.out.write(self._styled("...done thinking.\n\n"))
            self._thinking_open = False
            self._column, self._word = 0, ""
        self._content.append(content)
        if tool_calls:
            self.out.write(self._tool_calls_text(tool_calls))
        self._display(content)
        self.out.flush()

    def _styled(self, text: str, after: str = "") -> str:
        return f"{GREY}{BOLD}{text}{RESET}{after}" if self.color else text

    def _tool_calls_text(self, calls: list[Any]) -> str:
        lines = []
        for call in calls:
            function = (call or {}).get("function") or {}
            args = json.dumps(function.get("arguments") or {}, separators=(",", ":"))
            name, value = function.get("name", ""), args
            if self.color:
                name, value = f"{RESET}{name}{GREY}{BOLD}", f"{RESET}{args}{GREY}{BOLD}"
            lines.append(f"  Model called a non-existent function '{name}()' with arguments: {value}")
        text = "\n".join(lines)
        return f"{GREY}{BOLD}{text}{RESET}" if self.color else text

    def _display(self, text: str) -> None:
        if not self.word_wrap:
            self.out.write(text)
            return
        margin = self.width - 5
        for ch in text:
            if ch in "\r\n":
                self.out.write(ch)
                self._column, self._word = 0, ""
                continue
            if self._column + 1 > margin:
                self._wrap()
            self.out.write(ch)
            width = _char_width(ch)
            self._column += width
            # Wide characters (CJK) may break anywhere, so they never join a word.
            self._word = "" if ch in " \t" or width >= 2 else self._word + ch

    def _wrap(self) -> None:
        """Start a new line, taking the word being written along unless it is wider than a line."""
        word_width = _text_width(self._word)
        if word_width > self.width - 10:
            self.out.write("\n")
            self._column, self._word = 0, ""
            return
        if word_width:
            self.out.write(f"\x1b[{word_width}D")
        self.out.write("\x1b[K\n" + self._word)
        self._column = word_width


def metrics_summary(final: dict[str, Any]) -> str:
    """Ollama's ``--verbose`` block (``api.Metrics.Summary``) for the last chunk of a reply."""
    def ns(key: str) -> int:
        return int(final.get(key) or 0)

    lines = []
    if ns("total_duration") > 0:
        lines.append(f"total duration:       {go_duration(ns('total_duration'))}")
    if ns("load_duration") > 0:
        lines.append(f"load duration:        {go_duration(ns('load_duration'))}")
    if ns("prompt_eval_count") > 0:
        lines.append(f"prompt eval count:    {ns('prompt_eval_count')} token(s)")
    if ns("prompt_eval_duration") > 0:
        lines.append(f"prompt eval duration: {go_duration(ns('prompt_eval_duration'))}")
        lines.append(f"prompt eval rate:     {_rate(ns('prompt_eval_count'), ns('prompt_eval_duration'))}")
    if ns("eval_count") > 0:
        lines.append(f"eval count:           {ns('eval_count')} token(s)")
    if ns("eval_duration") > 0:
        lines.append(f"eval duration:        {go_duration(ns('eval_duration'))}")
        lines.append(f"eval rate:            {_rate(ns('eval_count'), ns('eval_duration'))}")
    return "".join(line + "\n" for line in lines)


def _rate(count: int, duration_ns: int) -> str:
    rate = count / (duration_ns / 1e9)
    return ("+Inf" if math.isinf(rate) else f"{rate:.2f}") + " tokens/s"


class Spinner:
    """A braille spinner on stderr while waiting for the first token (only on a terminal)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def __enter__(self) -> Spinner:
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._spin, name="spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _spin(self) -> None:
        frame = 0
        while not self._stopped.wait(0.1):
            self.stream.write(f"\x1b[?25l\r{self.FRAMES[frame]} ")
            self.stream.flush()
            self._drawn = True
            frame = (frame + 1) % len(self.FRAMES)

    def stop(self) -> None:
        """Stop and erase the spinner; safe to call more than once."""
        if self._thread is None:
            return
        self._stopped.set()
        self._thread.join()
        self._thread = None
        if self._drawn:
            self.stream.write("\r\x1b[2K\x1b[?25h")
            self.stream.flush()


# --- requests --------------------------------------------------------------------------------------


def ensure_model(client: Client, name: str, insecure: bool = False) -> None:
    """Make sure the server has ``name``, pulling it (with progress) when it does not."""
    try:
        client.show(name)
        return
    except ResponseError as exc:
        if exc.status != 404:
            raise
    from appliance.cli.transfer import pull_model

    try:
        pull_model(client, name, insecure)
    except ResponseError as exc:
        raise ResponseError(f"model '{name}' not found (pulling it failed: {exc})", 404) from None


def load_or_unload(client: Client, model: str, keep_alive: str | int | None = None,
                   think: bool | str | None = None) -> None:
    """Load ``model`` (unload it when ``keep_alive`` is 0) with an empty ``/api/generate``."""
    with Spinner():
        client.show(model)
        body: dict[str, Any] = {"model": model}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if think is not None:
            body["think"] = think
        for _ in client.generate(body):
            pass


def stream_reply(chunks: Iterator[dict[str, Any]], printer: ReplyPrinter,
                 spinner: Spinner) -> dict[str, Any] | None:
    """Show a streamed generate or chat reply; its last chunk, or None when Ctrl+C stopped it.

    Stopping closes the HTTP response, which is how the server learns to stop generating.
    """
    final: dict[str, Any] = {}
    try:
        for chunk in chunks:
            if "message" in chunk:
                message = chunk.get("message") or {}
                printer.role = message.get("role") or printer.role
            else:
                message = {key: chunk.get(key) for key in ("thinking", "tool_calls")}
                message["content"] = chunk.get("response")
            content = message.get("content") or ""
            if content or not printer.hide_thinking:
                spinner.stop()
            printer.feed(content, message.get("thinking") or "", message.get("tool_calls"))
            final = chunk
    except KeyboardInterrupt:
        spinner.stop()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        return None
    return final


def take_images(text: str) -> tuple[str, list[str]]:
    """The prompt without the image files it names, and those images as base64 (see cli.attachments).

    Raises ImageFileError after saying on stderr, as Ollama does, which file could not be used.
    """
    from appliance.cli.attachments import ImageFileError, extract_images
    from appliance.prompt.gotemplate_funcs import go_quote

    try:
        text, images = extract_images(text)
    except ImageFileError as exc:
        sys.stderr.write(f"Couldn't process file: {go_quote(str(exc))}\n")
        raise
    return text, [base64.b64encode(data).decode("ascii") for data in images]


def generate_once(client: Client, opts: RunOptions) -> int:
    """Answer ``opts.prompt`` once (an empty prompt just loads the model), as ``ollama run M PROMPT``."""
    out = sys.stdout
    images: list[str] = []
    if opts.multimodal:
        opts.prompt, images = take_images(opts.prompt)
    body = opts.request(prompt=opts.prompt)
    if images:
        body["images"] = images
    if opts.system:
        body["system"] = opts.system
    printer = ReplyPrinter(out, word_wrap=opts.word_wrap, hide_thinking=opts.hide_thinking)
    with Spinner() as spinner:
        final = stream_reply(client.generate(body), printer, spinner)
    if final is None:
        out.write("\n")
        return 0
    if opts.prompt:
        out.write("\n\n")
    out.flush()
    if opts.verbose and final.get("done"):
        sys.stderr.write(metrics_summary(final))
    return 0


def chat_turn(client: Client, opts: RunOptions) -> dict[str, Any] | None:
    """Send the conversation, show the reply; the assistant message, or None when Ctrl+C stopped it."""
    out = sys.stdout
    printer = ReplyPrinter(out, word_wrap=opts.word_wrap, hide_thinking=opts.hide_thinking)
    with Spinner() as spinner:
        final = stream_reply(client.chat(opts.request(messages=opts.messages)), printer, spinner)
    if final is None:
        out.write("\n")
        out.flush()
        return None
    if opts.messages:
        out.write("\n\n")
    out.flush()
    if opts.verbose:
        sys.stderr.write(metrics_summary(final))
    message: dict[str, Any] = {"role": printer.role, "content": printer.content}
    if printer.thinking:
        message["thinking"] = printer.thinking
    return message


def display_stored_messages(messages: list[dict[str, Any]], word_wrap: bool) -> None:
    """Show the conversation a model was saved with, before the first prompt."""
    for message in messages:
        if message.get("role") == "user":
            print(f">>> {message.get('content', '')}")
        elif message.get("role") == "assistant":
            ReplyPrinter(sys.stdout, word_wrap=word_wrap).feed(str(message.get("content") or ""))
            sys.stdout.write("\n\n")
    sys.stdout.flush()


# --- the command -----------------------------------------------------------------------------------


def run_run(model: str, prompt: list[str], *, verbose: bool = False, format: str = "",
            keepalive: str | None = None, think: str | None = None, hide_thinking: bool = False,
            no_word_wrap: bool = False, insecure: bool = False, dimensions: int = 0,
            truncate: str | None = None) -> int:
    """``ollama run``: one answer when a prompt is given or piped in, else the interactive REPL; the
    vector of the input, for an embedding model (``dimensions`` and ``truncate`` are for those).

    ``think`` is None when ``--think`` was not given; ``insecure`` is for the pull step, once it exists.
    """
    opts = RunOptions(model=model, format=format or "", hide_thinking=hide_thinking, verbose=verbose)
    format_value(opts.format)  # reject a bad --format before anything is sent
    if think is not None:
        opts.think = think_value(think)
    if keepalive:
        opts.keep_alive = keep_alive_value(keepalive)
    prompts = list(prompt)
    interactive = not prompts
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompts.insert(0, piped)  # Ollama puts piped input before the prompt words
        interactive = False
    if not sys.stdout.isatty():
        interactive = False
    opts.prompt = " ".join(prompts)
    opts.word_wrap = not no_word_wrap and sys.stdout.isatty()

    with Client() as client:
        ensure_model(client, model, insecure)
        info = client.show(model)
        if "embedding" in (info.get("capabilities") or []):
            from appliance.cli.embedding import embed_once, truncate_flag

            return embed_once(client, model, opts.prompt, keep_alive=opts.keep_alive,
                              truncate=truncate_flag(truncate), dimensions=dimensions)
        opts.think = infer_think(list(info.get("capabilities") or []), opts.think, think is not None)
        opts.apply_show(info)
        if not interactive:
            from appliance.cli.attachments import ImageFileError

            try:
                return generate_once(client, opts)
            except ImageFileError as exc:
                sys.stderr.write(f"Error: {exc}\n")
                return 1
            except BrokenPipeError:  # `ollama run m q | head` closed our stdout
                sys.stdout = open(os.devnull, "w")  # silence the flush at exit
                return 0
        load_or_unload(client, model, opts.keep_alive, opts.think)
        display_stored_messages(opts.loaded_messages, opts.word_wrap)
        from appliance.cli.interactive import run_interactive

        return run_interactive(client, opts, think_explicit=think is not None)
