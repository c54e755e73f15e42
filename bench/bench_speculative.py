"""Speculative decoding: decode speed with and without a draft model, and the draft's acceptance rate.

The runner process is driven directly (the JSON-lines protocol the server speaks to it), so the figures
are the engine's: one slot, greedy, the same prompts, rounds interleaved (no draft, draft, no draft, ...)
so that a busy neighbour hurts both alike.  Decode tok/s is eval_count / eval_duration of each reply.
Then, in this process, the median time of each kind of llama_decode a drafting step makes (the draft's
one-token guesses, its catch-up, the target's check of 1 + k tokens): what the ratio is made of.

    python bench/bench_speculative.py [--draft PATH] [--draft-max 4] [--tokens 128] [--rounds 3]

Without --draft the bundled SmolLM2-135M is its own draft: every guess is accepted, but the draft costs
as much as the target, so this pair shows the machinery's overhead and the ceiling of acceptance, not a
speed-up.  A real pair (a small draft for a much larger target sharing its vocabulary, e.g. Qwen2.5 0.5B
for Qwen2.5 7B) is what drafting is for; no such pair can be installed on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf  # noqa: E402
from appliance.engine.scheduler import _physical_cores  # noqa: E402

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = ["Why is the sky blue?", "Write a short story about a lighthouse keeper.",
           "Explain how a bicycle works.", "List ten facts about the Moon."]


class Runner:
    """One ``ollama runner`` child, spoken to over its pipes."""

    def __init__(self, model: str, draft: str | None, draft_max: int, ctx: int) -> None:
        cmd = [sys.executable, "-m", "appliance", "runner", "--model", model, "--ctx", str(ctx),
               "--threads", str(_physical_cores())]
        if draft:
            cmd += ["--draft", draft, "--draft-max", str(draft_max)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT)
        ready = self._event()
        if ready.get("event") != "ready":
            raise SystemExit(f"runner failed to start: {ready}")
        self.ids = 0

    def _event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("runner exited")
        return dict(json.loads(line))

    def complete(self, prompt: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        assert self.proc.stdin is not None
        self.ids += 1
        self.proc.stdin.write((json.dumps({"op": "completion", "id": self.ids, "prompt": prompt,
                                           "options": options}) + "\n").encode())
        self.proc.stdin.flush()
        text = ""
        while True:
            event = self._event()
            if event["event"] == "token":
                text += event["text"]
            elif event["event"] == "done":
                return text, event
            else:
                raise SystemExit(f"runner error: {event}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def decode_costs(model: str, draft: str, draft_max: int, tokens: int) -> None:
    """Median milliseconds per llama_decode of a drafting runner, by context and batch size."""
    from collections import defaultdict

    from appliance.engine import runner as runner_module

    args = runner_module.parse_args(["--model", model, "--draft", draft, "--draft-max", str(draft_max),
                                     "--ctx", "2048", "--threads", str(_physical_cores())])
    with open(os.devnull, "wb") as sink:
        runner = runner_module.Runner(args, sink)
        assert runner.draft is not None
        draft_ctx = runner.draft.ctx
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        decode = runner.llama.llama_decode

        def timed(ctx: Any, batch: Any) -> int:
            t0 = time.perf_counter()
            rc = int(decode(ctx, batch))
            who = "draft" if ctx == draft_ctx else "target"
            times[who, batch.n_tokens].append(time.perf_counter() - t0)
            return rc

        runner.llama.llama_decode = timed
        try:
            for i, prompt in enumerate(PROMPTS):
                runner.start_completion({"id": i, "prompt": CHATML.format(prompt),
                                         "options": {"temperature": 0, "num_predict": tokens}})
                while any(slot.busy for slot in runner.slots):
                    runner.step()
        finally:
            runner.llama.llama_decode = decode
            runner.close()
    for (who, n), values in sorted(times.items()):
        if len(values) >= 5:  # prompts and rare shapes left out
            print(f"  {who:>6} decode of {n:2d} token(s): {statistics.median(values) * 1e3:5.1f} ms "
                  f"(median of {len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(bundled_gguf()))
    parser.add_argument("--draft", help="draft GGUF (default: the model itself)")
    parser.add_argument("--draft-max", type=int, default=4, help="draft_num_predict")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    args = parser.parse_args()
    draft = args.draft or args.model
    options = {"temperature": args.temperature, "num_predict": args.tokens, "seed": 1}
    print(f"model {Path(args.model).name}, draft {Path(draft).name} (draft_num_predict {args.draft_max}), "
          f"{args.tokens} tokens, temperature {args.temperature}, {_physical_cores()} threads, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runners = {"no draft": Runner(args.model, None, 0, 2048),
               "draft": Runner(args.model, draft, args.draft_max, 2048)}
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    drafted = accepted = 0
    try:
        for runner in runners.values():  # warm-up: page the weights in
            runner.complete(CHATML.format("Hi"), {"temperature": 0, "num_predict": 8})
        for _round in range(args.rounds):
            for prompt in PROMPTS:
                texts = {}
                for name, runner in runners.items():
                    text, done = runner.complete(CHATML.format(prompt), options)
                    texts[name] = text
                    speeds[name].append(done["eval_count"] / max(done["eval_duration"], 1) * 1e9)
                    if name == "draft":
                        drafted += done["draft_count"]
                        accepted += done["draft_accepted"]
                if args.temperature <= 0 and texts["draft"] != texts["no draft"]:
                    print(f"  output differs for {prompt!r}!")
    finally:
        for runner in runners.values():
            runner.close()
    for name, values in speeds.items():
        print(f"{name:>9}: decode {statistics.median(values):6.1f} tok/s (median of {len(values)}; "
              f"{min(values):.1f}-{max(values):.1f})")
    ratio = statistics.median(speeds["draft"]) / statistics.median(speeds["no draft"])
    print(f"ratio draft / no draft: {ratio:.2f}x; acceptance {accepted}/{drafted} "
          f"({100 * accepted / max(drafted, 1):.1f}%); load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("what a drafting step costs:")
    decode_costs(args.model, draft, args.draft_max, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
