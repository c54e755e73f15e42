"""The bundled model's first impression: what a new user types first gets an answer on topic.

SmolLM2-135M is tiny; with Ollama's generic defaults (temperature 0.8, no system prompt) it answered
"hi" with an essay every time. appliance/assets/default_model.py gives it the model card's sampling
and a short system prompt, chosen on the prompts below (its docstring has the counts). The check is
loose and keyword-based: it asks "on topic?", not "correct and well written?".

Sampling is seeded, so each answer is fixed. SEEDS are seeds on which the chosen defaults answer
every prompt on topic (over seeds 1-8 they do so for 33 answers of 40); a change to the defaults,
the template or the sampler that makes the first impression worse shows up here.

``python -m tests.e2e.test_first_impression URL MODEL...`` counts on-topic answers of stored models
(e.g. copies of the bundled model with other PARAMETERs or SYSTEM) over seeds 1-8.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable

import ollama
import pytest

from appliance.assets.default_model import DEFAULT_MODEL_NAME, DEFAULT_PARAMETERS, DEFAULT_SYSTEM

FRUITS = ("apple", "banana", "orange", "grape", "mango", "pear", "strawberr", "cherr", "peach", "lemon",
          "kiwi", "pineapple", "watermelon", "berry", "plum")
#: prompt -> (what it is, is the answer on topic?)
PROMPTS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "hi": ("greeting", lambda a: bool(re.search(r"\b(hello|hi|hey|greetings|welcome)\b|how can i", a[:80].lower()))),
    "What is the capital of France?": ("capital", lambda a: "paris" in a.lower()),
    "What is 2 + 2?": ("arithmetic", lambda a: bool(re.search(r"\b4\b|\bfour\b", a.lower()))),
    "Name three fruits.": ("instruction", lambda a: sum(fruit in a.lower() for fruit in FRUITS) >= 2),
    "Write one sentence about the sea.": ("one-line instruction", lambda a: bool(re.search(r"\b(sea|ocean)", a.lower()))),
}
SEEDS = (2, 3, 7)
NUM_PREDICT = 64  # a first impression is the first few lines


def answer(client: ollama.Client, model: str, prompt: str, seed: int) -> str:
    reply = client.chat(model=model, messages=[{"role": "user", "content": prompt}],
                        options={"seed": seed, "num_predict": NUM_PREDICT})
    return reply.message.content or ""


def off_topic(client: ollama.Client, model: str, seeds: Iterable[int]) -> list[str]:
    """Every answer that misses its prompt, as "what (seed n): answer"."""
    misses = []
    for prompt, (what, on_topic) in PROMPTS.items():
        for seed in seeds:
            text = answer(client, model, prompt, seed)
            if not on_topic(text):
                misses.append(f"{what} (seed {seed}): {text[:200]!r}")
    return misses


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=300)


def test_the_bundled_model_carries_the_first_run_defaults(server):
    with server.http() as http:
        shown = http.post("/api/show", json={"model": DEFAULT_MODEL_NAME}).json()
    assert shown["system"] == DEFAULT_SYSTEM
    parameters = dict(line.split(None, 1) for line in shown["parameters"].splitlines())
    assert {name: float(parameters[name]) for name in DEFAULT_PARAMETERS} == {
        name: float(value) for name, value in DEFAULT_PARAMETERS.items()}


def test_first_prompts_get_answers_on_topic(client):
    misses = off_topic(client, DEFAULT_MODEL_NAME, SEEDS)
    assert misses == [], "\n".join(misses)


if __name__ == "__main__":
    url, *models = sys.argv[1:]
    for name in models:
        missed = off_topic(ollama.Client(host=url, timeout=300), name, range(1, 9))
        print(f"{name}: {len(PROMPTS) * 8 - len(missed)}/{len(PROMPTS) * 8} on topic", *missed, sep="\n  ")
