"""Every token counted, whatever the backend reports: usage missing, many tokens per chunk,
failures after generating, retries within the request's budget and the backend's retry
budget, the prompt's cost, and a stream with U+2028 inside its JSON. The backend is
``tests.fault_backend.LyingBackend``, a simulation that keeps the true count."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import gateway_client, make_settings, metric
from tests.fakes import ScriptedStream, scripted_transport, sse_body
from tests.fault_backend import LyingBackend

CHAT = "/v1/chat/completions"


def ask(strategy: str, budget: int, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model",
                            "messages": [{"role": "user", "content": "How many bridges?"}],
                            "router": {"strategy": strategy, "budget_tokens": budget}, **extra}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def last_event(reply: httpx.Response) -> dict[str, Any]:
    events = [json.loads(line[6:]) for line in reply.text.splitlines()
              if line.startswith("data: {")]
    return events[-1]


async def post_all(backend: LyingBackend, bodies: list[dict[str, Any]],
                   **settings: Any) -> list[httpx.Response]:
    async with gateway_client(backend.transport(), make_settings(**settings)) as client:
        return [await client.post(CHAT, json=body) for body in bodies]


def upstream_total() -> float:
    """Every attempt ``ttc_upstream_requests_total`` counted for the fake backend."""
    from prometheus_client import REGISTRY

    return sum(sample.value for family in REGISTRY.collect()
               if family.name == "ttc_upstream_requests"
               for sample in family.samples
               if sample.name == "ttc_upstream_requests_total"
               and sample.labels["backend"] == "fake")


async def test_a_reply_without_usage_is_counted_with_the_backends_tokenizer():
    backend = LyingBackend([5, 9], usage=False, tokenizer=True)
    before = upstream_total()
    replies = await post_all(backend, [ask("sequential", 100), ask("sequential", 100)])
    # The tokenizer's calls are calls to the backend too: they were counted nowhere.
    assert upstream_total() == before + 2 + backend.tokenize_calls
    for reply in replies:
        router = reply.json()["router"]
        assert router["usage_source"] == "tokenizer"
        assert reply.json()["usage"]["completion_tokens"] == router["spent_tokens"]
    # 5 words and an end-of-sequence token, then 9 and one: counted exactly
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [6, 10]
    assert backend.generated == 16 and backend.tokenize_calls == 4  # answers and prompts
    # the prompt: its 3 words and at most 8 tokens of chat template around the message
    assert [r.json()["usage"]["prompt_tokens"] for r in replies] == [11, 11]


async def test_without_usage_or_tokenizer_the_whole_grant_is_charged_and_flagged():
    backend = LyingBackend([5], usage=False, tokenizer=False)
    replies = await post_all(backend, [ask("direct", 40), ask("direct", 40, stream=True)])
    json_router = replies[0].json()["router"]
    assert replies[0].json()["usage"]["completion_tokens"] == 40  # the grant, never 0
    assert json_router["usage_source"] == "grant" and json_router["usage_estimated"] is True
    streamed = last_event(replies[1])
    assert streamed["usage"]["completion_tokens"] == 40
    assert backend.generated == 12 and backend.probes == 2  # /tokenize, /extras: once only


async def test_many_tokens_in_one_chunk_are_all_counted():
    backend = LyingBackend([120], usage=False, tokenizer=True, tokens_per_chunk=50)
    (reply,) = await post_all(backend, [ask("direct", 500, stream=True)])
    assert last_event(reply)["usage"]["completion_tokens"] == backend.generated == 121


async def test_a_call_that_fails_after_generating_is_charged_and_not_retried_past_the_budget():
    backend = LyingBackend([500], fail={0, 1, 2}, usage=True)
    before = metric("ttc_tokens_total", kind="completion", strategy="sequential", policy="none",
                    arm="none", model="fake-model")
    (reply,) = await post_all(backend, [ask("sequential", 64)], max_retries=2)
    assert reply.status_code == 502
    # The failed attempt took the whole budget (its grant): no retry could be paid for.
    assert backend.calls == 1 and backend.generated <= 64
    after = metric("ttc_tokens_total", kind="completion", strategy="sequential", policy="none",
                   arm="none", model="fake-model")
    assert after - before >= backend.generated


async def test_a_failing_vote_is_bounded_by_the_requests_retries():
    backend = LyingBackend([4], fail=set(range(1000)), fail_status=429)
    refused = metric("ttc_upstream_retries_refused_total", backend="fake",
                     reason="request_retries")
    (reply,) = await post_all(backend, [ask("parallel_vote", 8000)], vote_width=8,
                              vote_first_wave=8, vote_majority_first=False, max_retries=2,
                              max_request_retries=3,
                              supports_n=False)
    assert reply.status_code == 429
    assert backend.calls == 8 + 3  # not 8 x 3
    assert backend.generated == 0 and reply.json()["error"]
    assert metric("ttc_upstream_retries_refused_total", backend="fake",
                  reason="request_retries") > refused


async def test_the_retry_budget_bounds_retries_across_requests():
    backend = LyingBackend([4], fail=set(range(1000)))
    bodies = [ask("direct", 8) for _ in range(10)]
    replies = await post_all(backend, bodies, max_retries=2, retry_budget_ratio=0.2,
                             retry_budget_min_per_s=0, max_request_retries=10,
                             breaker_failures=1000)
    assert all(r.status_code == 502 for r in replies)
    # Each 500 was charged its grant (8), the whole budget: no retry could be paid for (and
    # the retry budget refused the first ones anyway). With room in the budget to pay:
    backend2 = LyingBackend([4], fail=set(range(1000)))
    replies = await post_all(backend2, [ask("direct", 10_000, max_tokens=8)
                                        for _ in range(10)],
                             max_retries=2, retry_budget_ratio=0.2, retry_budget_min_per_s=0,
                             max_request_retries=10, breaker_failures=1000)
    assert backend2.calls == 10 + 2  # retries: 20% of the 10 calls, not 10 x 2
    assert metric("ttc_retry_budget_available", backend="fake") == 0
    assert backend.calls == 10


async def test_search_turns_debit_what_they_really_spent():
    """The issue's case: budget 400, a backend without usage; turns used to be free."""
    backend = LyingBackend([300], usage=False, tail=lambda i: "SEARCH: bridges")
    (reply,) = await post_all(backend, [ask("search", 400)], search_question_first=False)
    assert reply.status_code == 200
    assert backend.generated <= 400
    assert reply.json()["usage"]["completion_tokens"] >= backend.generated


async def test_the_prompt_cost_is_visible_and_a_total_budget_bounds_it():
    long_prompt = "word " * 200  # 1000 bytes; the backend reports 5 prompt tokens per call
    backend = LyingBackend([30])
    body = ask("parallel_vote", 1000)
    body["messages"][0]["content"] = long_prompt
    body["router"]["budget_total_tokens"] = 1200
    (reply,) = await post_all(backend, [body], vote_width=4, vote_first_wave=4,
                              vote_majority_first=False)
    usage, router = reply.json()["usage"], reply.json()["router"]
    assert router["prompt_tokens"] == usage["prompt_tokens"] == 5 * backend.calls
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 1200
    assert router["budget_total_tokens"] == 1200
    # The first call reserved the prompt's upper bound (1000 bytes and 8 tokens for the
    # message), which left 192 of the 1200 for its 4 answers: 48 tokens each at most.
    assert usage["completion_tokens"] <= 192


async def test_a_stream_with_unicode_line_separators_inside_json_passes_through(chat_body):
    text = "one\u2028two\u2029three\u0085four"
    payloads = [
        {"id": "x", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
        {"id": "x", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}]
    # Servers write these characters raw inside JSON (vLLM through pydantic, llama.cpp).
    raw = [b"data: " + json.dumps(p, ensure_ascii=False).encode() + b"\n\n" for p in payloads]
    raw.append(b"data: [DONE]\n\n")
    assert "\u2028".encode() in raw[0]
    transport = scripted_transport(lambda r: httpx.Response(200, stream=ScriptedStream(raw)))
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json={**chat_body, "stream": True})
    assert reply.status_code == 200 and '"error"' not in reply.text
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content")
                for line in reply.text.split("\n") if line.startswith("data: {")
                and json.loads(line[6:])["choices"]]
    assert text in contents


async def test_a_stream_that_ignores_its_cap_is_cut_off_and_counted_in_full(chat_body):
    sent = []

    class EndlessStream(httpx.AsyncByteStream):
        """A backend ignoring max_tokens, with no usage: a word per chunk, for ever."""

        async def __aiter__(self):
            while True:
                sent.append(1)
                yield (b'data: {"id": "x", "object": "chat.completion.chunk", "model": "m", '
                       b'"choices": [{"index": 0, "delta": {"content": "la "}, '
                       b'"finish_reason": null}]}\n\n')

    transport = scripted_transport(lambda r: httpx.Response(200, stream=EndlessStream()))
    body = {**chat_body, "stream": True, "stream_options": {"include_usage": True},
            "router": {"strategy": "sequential", "budget_tokens": 20}}
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json=body)
    last = last_event(reply)
    chain_cap = 20  # no reserve: a quarter of 20 cannot hold a forced answer (7 tokens)
    assert len(sent) <= chain_cap + 2  # read no further than one chunk past the grant
    assert last["router"]["budget_overrun"] is True
    assert last["usage"]["completion_tokens"] >= chain_cap + 1


async def test_a_direct_stream_that_ignores_its_cap_ends_with_an_error_and_is_counted(
        chat_body):
    chunk = (b'data: {"id": "x", "object": "chat.completion.chunk", "model": "m", '
             b'"choices": [{"index": 0, "delta": {"content": "la "}, "finish_reason": null}]}'
             b'\n\n')
    transport = scripted_transport(lambda r: httpx.Response(200, stream=ScriptedStream(
        [chunk] * 500)))
    before = metric("ttc_tokens_total", kind="completion", strategy="direct", policy="none",
                    arm="none", model="fake-model")
    body = {**chat_body, "stream": True, "max_tokens": 10}
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json=body)
    events = [line for line in reply.text.splitlines() if line.startswith("data: {")]
    assert '"upstream_over_cap"' in events[-1]
    assert len(events) <= 12  # 11 chunks relayed, then the error
    after = metric("ttc_tokens_total", kind="completion", strategy="direct", policy="none",
                   arm="none", model="fake-model")
    assert after - before >= 11


async def test_a_total_budget_smaller_than_the_prompt_is_a_clear_400():
    backend = LyingBackend([5])
    body = ask("parallel_vote", 100)
    body["router"]["budget_total_tokens"] = 10  # "How many bridges?": 17 bytes, 8 template
    (reply,) = await post_all(backend, [body])
    assert reply.status_code == 400 and backend.calls == 0
    assert reply.json()["error"]["param"] == "router.budget_total_tokens"


def _tokenizing(reply: dict[str, Any]) -> httpx.MockTransport:
    """A backend answering every completion call with ``reply`` and counting words at
    llama.cpp's ``POST /tokenize``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            words = str(json.loads(request.content).get("content") or "").split()
            return httpx.Response(200, json={"tokens": list(range(len(words)))})
        return httpx.Response(200, json=reply)

    return scripted_transport(handle)


def _reply(text: str, finish: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": text}}]}
    if usage is not None:
        reply["usage"] = usage
    return reply


async def test_negative_usage_is_not_a_count_and_the_reply_is_still_served(chat_body):
    # A broken proxy's usage: a negative count would lower the ledger's spend (room for more
    # calls than the budget) and a Prometheus counter cannot go down (it raised: a 500).
    usage = {"prompt_tokens": -3, "completion_tokens": -40, "total_tokens": -43}
    transport = _tokenizing(_reply("one two three four", "stop", usage))
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json={**chat_body, "max_tokens": 10})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["completion_tokens"] == 5  # 4 words and end-of-sequence, counted
    assert body["usage"]["prompt_tokens"] > 0
    assert body["router"]["usage_estimated"] is True


async def test_a_reply_cut_past_its_cap_without_usage_is_counted_by_its_text(chat_body):
    # A backend that ignores max_tokens (cut at its own context's end) and reports no usage:
    # "length" means "generated its max_tokens" only when the cap was honoured.
    transport = _tokenizing(_reply(" ".join(["la"] * 50), "length", None))
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json={**chat_body, "max_tokens": 10})
    body = reply.json()
    assert body["usage"]["completion_tokens"] == 50
    assert body["router"]["budget_overrun"] is True  # more than its grant of 10
    forced = {**chat_body, "router": {"strategy": "sequential", "budget_tokens": 20}}
    async with gateway_client(transport) as client:
        reply = await client.post(CHAT, json=forced)
    router = reply.json()["router"]
    assert router["spent_tokens"] == 50 and router["budget_overrun"] is True


async def test_a_stream_whose_only_usage_came_early_is_counted_by_its_chunks(chat_body):
    # A proxy that sends a running usage (prompt only) with its first chunk and none at the
    # end: 30 chunks of text are 30 tokens at least, whatever that stale usage says.
    base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake-model"}
    early = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                  "finish_reason": None}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}}
    text = {**base, "choices": [{"index": 0, "delta": {"content": "w "},
                                 "finish_reason": None}]}
    end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    transport = scripted_transport(lambda r: httpx.Response(
        200, headers={"content-type": "text/event-stream"},
        stream=ScriptedStream(sse_body(early, *[text] * 30, end, "data: [DONE]\n\n"))))
    stream = {**chat_body, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway_client(transport) as client:
        for extra in ({"max_tokens": 100},
                      {"router": {"strategy": "sequential", "budget_tokens": 100}}):
            last = last_event(await client.post(CHAT, json={**stream, **extra}))
            assert last["usage"]["completion_tokens"] >= 30, extra
            assert last["router"]["usage_estimated"] is True


def best_of_backend(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    """A legacy-completions backend that honours ``best_of`` as OpenAI does: it generates
    ``best_of`` candidates of ``max_tokens`` each, returns the ``n`` best, and reports the
    usage of all of them."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        cap, n = body["max_tokens"], body.get("n") or 1
        generated = cap * max(n, body.get("best_of") or 1)
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
            "choices": [{"index": i, "text": " ".join(["w"] * cap), "finish_reason": "length",
                         "logprobs": None} for i in range(n)],
            "usage": {"prompt_tokens": 3, "completion_tokens": generated,
                      "total_tokens": 3 + generated}})

    return scripted_transport(handle)


async def test_best_of_candidates_are_paid_from_the_budget_not_past_it():
    # Seen through the gateway: /v1/completions with best_of 5 (passed to the backend
    # untouched) and budget_tokens 10 sent max_tokens 10 and spent 50 tokens, five times
    # its budget (router.budget_overrun): the grant counted the n returned choices, not the
    # best_of candidates the backend generates.
    seen: list[dict[str, Any]] = []
    ask_best = {"model": "fake-model", "prompt": "Once", "best_of": 5, "max_tokens": 10}
    async with gateway_client(best_of_backend(seen)) as client:
        budgeted = await client.post("/v1/completions",
                                     json={**ask_best, "router": {"budget_tokens": 10}})
        free = await client.post("/v1/completions", json=ask_best)
    router = budgeted.json()["router"]
    assert budgeted.status_code == 200
    assert seen[0]["best_of"] == 5 and seen[0]["max_tokens"] == 2  # 5 candidates of 2
    assert router["spent_tokens"] == 10 and not router.get("budget_overrun")
    assert free.json()["usage"]["completion_tokens"] == 50  # no budget: the client's cap kept
    assert seen[1]["max_tokens"] == 10


def batch_backend(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    """A legacy-completions backend that answers a batch ``prompt`` as OpenAI and vLLM do:
    ``n`` choices of up to ``max_tokens`` for each prompt, prompt-major, with the usage of
    them all."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        cap, n = body["max_tokens"], body.get("n") or 1
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
            "choices": [{"index": i, "text": " ".join(["w"] * cap), "finish_reason": "length",
                         "logprobs": None} for i in range(len(prompts) * n)],
            "usage": {"prompt_tokens": 3 * len(prompts), "completion_tokens": cap * len(prompts)
                      * n, "total_tokens": (3 + cap * n) * len(prompts)}})

    return scripted_transport(handle)


async def test_a_batch_of_prompts_is_paid_from_the_budget_not_past_it():
    # /v1/completions with 5 prompts and budget_tokens 10 sent max_tokens 10 and spent 50
    # tokens (router.budget_overrun), and the gateway took the backend for one that ignores
    # max_tokens ("generated more tokens than max_tokens granted": its calls streamed and cut
    # for an hour): the grant counted the n choices of one prompt, not of every prompt.
    seen: list[dict[str, Any]] = []
    batch = {"model": "fake-model", "prompt": [f"Once {i}" for i in range(5)], "max_tokens": 10}
    async with gateway_client(batch_backend(seen)) as client:
        budgeted = await client.post("/v1/completions",
                                     json={**batch, "router": {"budget_tokens": 10}})
        free = await client.post("/v1/completions", json=batch)
        small = await client.post("/v1/completions",
                                  json={**batch, "router": {"budget_tokens": 3}})
    router = budgeted.json()["router"]
    assert budgeted.status_code == 200, budgeted.text
    assert seen[0]["max_tokens"] == 2  # 5 prompts of 2 tokens
    assert router["spent_tokens"] == 10 and not router.get("budget_overrun")
    assert len(budgeted.json()["choices"]) == 5
    assert free.json()["usage"]["completion_tokens"] == 50  # no budget: the client's cap kept
    assert seen[1]["max_tokens"] == 10 and not free.json()["router"].get("budget_overrun")
    assert small.status_code == 400 and small.json()["error"]["param"] == "prompt"
