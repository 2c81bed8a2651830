"""Drive a running gateway with the official ``openai`` client: one JSON completion, one
stream with usage, and the metrics; exit non-zero with a message on the first failure.

    python deploy/images/smoke.py http://127.0.0.1:8000/v1 [--model auto] [--max-tokens 64]

Used by deploy/images/image-test.sh against the images it builds.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request

from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="the gateway's OpenAI base URL, ending in /v1")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)
    question = [{"role": "user", "content": "What is 17 * 3? Answer with the number."}]

    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=args.model, messages=question, max_tokens=args.max_tokens)
    reply = raw.parse()
    router = (reply.model_extra or {}).get("router") or {}
    overhead_ms = float(raw.headers["x-ttc-overhead-ms"])
    print(f"json: {reply.choices[0].message.content!r:.60} usage={reply.usage.total_tokens} "
          f"strategy={router.get('strategy')} overhead={overhead_ms:.1f} ms "
          f"({time.perf_counter() - started:.2f} s)")
    check(reply.usage.completion_tokens > 0, "the reply counts no completion tokens")
    check(router.get("decision_id", "").startswith("dec_"), "no router.decision_id")
    check(raw.headers["x-ttc-decision-id"] == router["decision_id"], "header and body disagree")

    chunks = list(client.chat.completions.create(
        model=args.model, messages=question, max_tokens=args.max_tokens, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    print(f"stream: {len(chunks)} chunks, {text!r:.60} usage={usage and usage.total_tokens}")
    check(usage is not None and usage.completion_tokens > 0, "the stream ends without usage")

    metrics_url = args.base_url.rsplit("/v1", 1)[0] + "/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        exposition = response.read().decode()
    for name in ("ttc_requests_total", "ttc_time_to_first_token_seconds_count",
                 "ttc_requests_in_flight"):
        check(name in exposition, f"/metrics has no {name}")
    print("metrics: ok")
    return 0


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"smoke: FAILED: {message}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
