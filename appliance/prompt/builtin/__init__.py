"""Built-in renderers and parsers, by the names a Modelfile's ``RENDERER`` and ``PARSER`` lines use.

Ollama's library models name them in their config (``"renderer": "qwen3-coder"``); a model with a
renderer has its prompt built here instead of by its template, and a model with a parser has its output
split here into content, thinking and tool calls.  Each family lives in its own module; this registry
is the only place that knows the names.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.errors import BadRequest
from appliance.prompt.builtin.base import (
    THINK_LEVELS,
    Parser,
    Passthrough,
    Renderer,
    ThinkValue,
    think_level,
    think_on,
)
from appliance.prompt.builtin.cogito import CogitoParser, CogitoRenderer
from appliance.prompt.builtin.deepseek3 import DeepSeek3Parser, DeepSeek31Renderer
from appliance.prompt.builtin.gemma4 import Gemma4Parser, Gemma4Renderer
from appliance.prompt.builtin.harmony import HarmonyParser
from appliance.prompt.builtin.olmo3 import Olmo3Parser, Olmo3Renderer, Olmo3ThinkRenderer, olmo3_think_parser
from appliance.prompt.builtin.qwen3 import Qwen3Parser, Qwen3VLRenderer
from appliance.prompt.builtin.qwen3coder import Qwen3CoderParser, Qwen3CoderRenderer
from appliance.prompt.builtin.qwen35 import Qwen35Renderer, qwen35_parser

__all__ = [
    "PARSERS",
    "RENDERERS",
    "THINK_LEVELS",
    "Parser",
    "Renderer",
    "ThinkValue",
    "check_names",
    "parser_for",
    "renderer_for",
    "think_level",
    "think_on",
]

PARSERS: dict[str, Callable[[], Parser]] = {
    "qwen3": lambda: Qwen3Parser(thinking=False, default_thinking=False),
    "qwen3-thinking": lambda: Qwen3Parser(thinking=True, default_thinking=True),
    "qwen3-vl-instruct": lambda: Qwen3Parser(thinking=False, default_thinking=False),
    "qwen3-vl-thinking": lambda: Qwen3Parser(thinking=True, default_thinking=True, always_thinking=True),
    "qwen3-coder": Qwen3CoderParser,
    "qwen3.5": qwen35_parser,
    "ornith": qwen35_parser,
    "deepseek3": DeepSeek3Parser,
    "harmony": HarmonyParser,
    "gemma4": Gemma4Parser,
    "gemma4-no-thinking": lambda: Gemma4Parser(thinking=False),
    "passthrough": Passthrough,
    "cogito": CogitoParser,
    "olmo3": Olmo3Parser,
    "olmo3-think": olmo3_think_parser,
    # Nemotron 3 Nano thinks and calls tools as Qwen 3.5 does: <think>, then Qwen3-Coder XML calls.
    "nemotron-3-nano": qwen35_parser,
    "nemotron-3.5-nano": qwen35_parser,
}

RENDERERS: dict[str, Callable[[], Renderer]] = {
    "qwen3-coder": Qwen3CoderRenderer,
    "qwen3.5": Qwen35Renderer,
    "ornith": lambda: Qwen35Renderer(every_trace=True),
    "qwen3-vl-instruct": lambda: Qwen3VLRenderer(thinking=False),
    "qwen3-vl-thinking": lambda: Qwen3VLRenderer(thinking=True),
    "deepseek3.1": DeepSeek31Renderer,
    "gemma4": Gemma4Renderer,
    "gemma4-small": Gemma4Renderer,
    "gemma4-large": lambda: Gemma4Renderer(empty_trace_without_thinking=True),
    "cogito": CogitoRenderer,
    "olmo3": Olmo3Renderer,
    "olmo3.1": lambda: Olmo3Renderer(olmo31=True),
    "olmo3-think": Olmo3ThinkRenderer,
    "olmo3-32b-think": lambda: Olmo3ThinkRenderer(olmo3_32b=True),
}


def parser_for(name: str | None) -> Parser | None:
    """A new parser for ``name``; None for no name or one this server does not know."""
    factory = PARSERS.get(name or "")
    return factory() if factory else None


def renderer_for(name: str | None) -> Renderer | None:
    factory = RENDERERS.get(name or "")
    return factory() if factory else None


def check_names(renderer: str | None, parser: str | None) -> None:
    """BadRequest naming an unknown renderer or parser (at create, so a model never runs without one)."""
    if renderer and renderer not in RENDERERS:
        raise BadRequest(f"unknown renderer '{renderer}'; known: {', '.join(sorted(RENDERERS))}")
    if parser and parser not in PARSERS:
        raise BadRequest(f"unknown parser '{parser}'; known: {', '.join(sorted(PARSERS))}")
