"""Spend under backends that misbehave: does `auto` keep to the operator's mean?

A SIMULATION. `auto` sizes its plans from the answer lengths it observes (per model and kind
of prompt, ``router_models.answer_lengths``), so a backend whose lengths feed on the room they
are given can push the sizes up request after request. This bench sends the same mixed
traffic (knowledge guesses, word problems, one-liners, open questions; no budget, no
``max_tokens``, as a client that only switched its base URL does) through the gateway, in
process, to scripted backends that each behave one way. A token is a whitespace word, usage
counts them exactly, ``n`` is honoured:

- ``short``: 20-60 tokens of reasoning, then "The answer is 7.";
- ``checks_after``: 60-120 tokens, the answer, then 200-400 tokens checking it;
- ``no_marker``: 50-300 tokens and no explicit answer line;
- ``long``: 1,200-1,800 tokens of reasoning before the answer (a reasoning model);
- ``fills_cap``: writes until ``max_tokens`` and states its answer there, ``finish_reason``
  ``stop`` (budget forcing; the plain simulator does this on prompts it does not know);
- ``never_answers``: writes until ``max_tokens``, ``finish_reason`` ``length``, no answer (a
  small model that loops);
- ``answers_late``: reasons for 89% of ``max_tokens``, answers, then checks its answer until
  the cap cuts it (``finish_reason`` ``length``);
- ``reasoning``: a reasoning model (vLLM's reasoning parser, DeepSeek-R1): 600-900 tokens in
  ``reasoning_content``, then the answer as ``content``; cut before it, ``content`` is empty.

Per backend it prints the mean completion tokens per request against the target mean
(``learned_target_tokens``), the 99th percentile and the largest request, the mean of the
last quarter of the traffic (where a ratchet shows), and the share of replies whose content
states the answer (a reply whose samples were all cut states none). ``--baseline DIR`` runs
the same traffic through the gateway of another source tree (a worktree of an older commit) in
a subprocess, so a change is measured against its parent in one run.

Run: `.venv/bin/python bench/spend_bounds.py` (about a minute);
`--baseline /tmp/before` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # this script runs against another tree too
BEHAVIOURS = ("short", "checks_after", "no_marker", "long", "fills_cap", "never_answers",
              "answers_late", "reasoning")
ANSWER = ["The", "answer", "is", "7."]
PROMPTS = (
    "Which planet has the most moons? (A) Mars (B) Saturn (C) Venus (D) Mercury",
    "Which gas do plants take in for photosynthesis? (A) oxygen (B) nitrogen (C) carbon "
    "dioxide (D) helium",
    "Maria has 12 apples. She gives 5 to Tom, then buys 3 times as many as she has left. "
    "Then she eats 4. How many apples does Maria have now?",
    "A tank holds 80 litres. It loses 6 litres an hour for 5 hours, then is filled with "
    "half of what it lost. How many litres are in it?",
    "What is 2+2?",
    "Name the capital of France.",
    "Is it better to learn to swim as a child or as an adult? Explain briefly.",
    "Would a penguin survive a summer in the Sahara?",
)


def _reply_words(behaviour: str, cap: int, rng: random.Random
                 ) -> tuple[list[str], str, list[str]]:
    """One choice's content words, finish reason and ``reasoning_content`` words for
    ``behaviour`` given ``max_tokens`` ``cap``."""
    if behaviour == "reasoning":
        need = rng.randint(600, 900)
        if cap < need + len(ANSWER):
            return [], "length", ["hmm"] * cap
        return ANSWER, "stop", ["hmm"] * need
    words, finish = _visible_words(behaviour, cap, rng)
    return words, finish, []


def _visible_words(behaviour: str, cap: int, rng: random.Random) -> tuple[list[str], str]:
    """The content words and finish reason of every behaviour but ``reasoning``."""
    answer = ANSWER
    if behaviour == "answers_late":
        reasoning = ["step"] * max(0, int(0.89 * cap) - len(answer))
        return (reasoning + answer + ["check"] * cap)[:cap], "length"
    if behaviour in ("fills_cap", "never_answers"):
        if behaviour == "fills_cap":
            return ["step"] * max(0, cap - len(answer)) + answer[:cap], "stop"
        return ["loop"] * cap, "length"
    reasoning = {"short": (20, 60), "checks_after": (60, 120), "no_marker": (50, 300),
                 "long": (1200, 1800)}[behaviour]
    words = ["think"] * rng.randint(*reasoning)
    if behaviour != "no_marker":
        words += answer
    if behaviour == "checks_after":
        words += ["check"] * rng.randint(200, 400)
    if len(words) > cap:
        return words[:cap], "length"
    return words, "stop"


def scripted_backend(behaviour: str, seed: int) -> httpx.MockTransport:
    """An OpenAI-compatible chat backend that behaves as ``behaviour`` (SIMULATION)."""
    rng = random.Random(seed)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "bench"}]})
        body = json.loads(request.content)
        cap = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        choices, spent = [], 0
        for index in range(int(body.get("n") or 1)):
            words, finish, hidden = _reply_words(behaviour, cap, rng)
            spent += len(words) + len(hidden)
            message = {"role": "assistant", "content": " ".join(words)}
            if hidden:
                message["reasoning_content"] = " ".join(hidden)
            choices.append({"index": index, "finish_reason": finish, "message": message})
        return httpx.Response(200, json={
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
            "model": "scripted", "choices": choices,
            "usage": {"prompt_tokens": 20, "completion_tokens": spent,
                      "total_tokens": 20 + spent}})

    return httpx.MockTransport(handle)


async def run_behaviour(behaviour: str, requests: int, target: float, seed: int
                        ) -> list[tuple[int, bool]]:
    """(completion tokens, content states the answer) of each of ``requests`` `auto`
    requests through a fresh gateway."""
    from service.app import create_app
    from service.settings import Settings, UpstreamSettings

    settings = Settings(upstreams=[UpstreamSettings(url="http://backend.bench/v1",
                                                    name="scripted", models=["scripted"])],
                        learned_target_tokens=target, retry_backoff_s=0.0)
    app = create_app(settings, transport=scripted_backend(behaviour, seed))
    rng = random.Random(seed)
    spent = []
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gateway.bench", timeout=60) as client):
        for _ in range(requests):
            body = {"model": "auto", "messages": [{"role": "user",
                                                   "content": rng.choice(PROMPTS)}]}
            reply = await client.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            data = reply.json()
            content = data["choices"][0]["message"].get("content") or ""
            spent.append((int(data["usage"]["completion_tokens"]),
                          " ".join(ANSWER) in content))
    return spent


def summary(replies: list[tuple[int, bool]], target: float) -> dict[str, float]:
    """Mean, p99, largest and last-quarter mean of completion tokens per request, the mean's
    ratio to ``target``, and the share of replies that state the answer."""
    values = np.array([tokens for tokens, _ in replies], float)
    tail = values[-max(1, len(values) // 4):]
    return {"mean": float(values.mean()), "x_target": float(values.mean() / target),
            "p99": float(np.percentile(values, 99)), "max": float(values.max()),
            "last_quarter_mean": float(tail.mean()),
            "answered": float(np.mean([stated for _, stated in replies]))}


def measure(requests: int, target: float, seed: int) -> dict[str, dict[str, float]]:
    """``summary`` per behaviour, each through its own fresh gateway."""
    os.environ.setdefault("TTC_DATA_DIR", tempfile.mkdtemp(prefix="ttc-spend-bounds-"))
    return {b: summary(asyncio.run(run_behaviour(b, requests, target, seed)), target)
            for b in BEHAVIOURS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per backend")
    parser.add_argument("--target", type=float, default=512.0,
                        help="learned_target_tokens, completion tokens per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", type=Path,
                        help="another source tree (e.g. a worktree of the parent commit)")
    parser.add_argument("--json", dest="json_only", action="store_true",
                        help=argparse.SUPPRESS)  # the baseline's subprocess mode
    args = parser.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)
    found = measure(args.requests, args.target, args.seed)
    if args.json_only:
        print(json.dumps(found))
        return 0
    columns = {"this tree": found}
    if args.baseline is not None:
        out = subprocess.run(
            [sys.executable, __file__, "--json",
             "--requests", str(args.requests), "--target", str(args.target),
             "--seed", str(args.seed)],
            env={**os.environ, "PYTHONPATH": str(args.baseline)}, cwd=args.baseline,
            capture_output=True, text=True, check=True)
        columns = {f"baseline ({args.baseline})": json.loads(out.stdout.splitlines()[-1]),
                   **columns}
    print(f"SIMULATION: scripted backends, {args.requests} `auto` requests each, target mean "
          f"{args.target:g} completion tokens, seed {args.seed}\n")
    print("| backend | tree | mean (x target) | last quarter mean | p99 | largest | answered |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for behaviour in BEHAVIOURS:
        for tree, rows in columns.items():
            r = rows[behaviour]
            print(f"| {behaviour} | {tree} | {r['mean']:.0f} ({r['x_target']:.2f}x) | "
                  f"{r['last_quarter_mean']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | "
                  f"{r['answered']:.0%} |")
    return 0


if __name__ == "__main__":
    sys.path.append(str(ROOT))  # after PYTHONPATH, so --baseline's tree is the one imported
    raise SystemExit(main())
