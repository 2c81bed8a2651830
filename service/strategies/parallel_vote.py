"""``parallel_vote``: several short samples and a majority vote on their final answers
(self-consistency, Wang et al. 2023), stopped early once the vote is settled
(Adaptive-Consistency, Aggarwal et al. 2023).

The plan gives the most samples (``width``, k) and the tokens per sample (``depth_tokens``, L;
by default ``budget_tokens // width``). Samples are drawn in waves: ``vote_first_wave`` first,
then ``vote_wave`` at a time, and after each wave the Beta stopping rule
(``router_models.voting.is_settled``, at ``vote_stop_threshold``) decides whether more
samples could change the answer. An upstream may have its own first wave and threshold
(``UpstreamSettings``): the embedded model's votes stop once two samples agree, the rule its
outcome bank validated (``LocalModel.vote_stopping``).
Each sample's final answer is extracted and normalised (``router_models.answers``); samples
without one do not vote; votes are weighted by confidence when the backend returns logprobs.

**Greedy first** (``vote_greedy_first``, on by default). When the gateway chooses how the
vote samples (the client set neither ``temperature`` nor ``top_p``), its first sample is the
greedy decode (temperature 0) and the rest are sampled at ``DEFAULT_VOTE_TEMPERATURE``; ties
go to the answer seen first, so to the greedy one. A small model's sampled chains are worse
than its greedy chain, and a vote of them can lose to the one chain it was meant to improve.
On the outcome bank (Qwen2.5-Coder-0.5B, 997 runs, ``python -m bench.greedy_first``, 7 Dec
2026), with samples of 512 tokens: a vote of 3 right on 32.8% plain, 36.1% greedy first (+3.3
points, paired 95% [+0.6, +6.0], McNemar p = 0.023; the greedy chain alone 33.8%); of 5,
36.6% against 39.2% (+2.6, p = 0.033); of 8, +0.4 (p = 0.77); with samples of 256 tokens, of
3, +3.4 (p = 0.007). Those figures are in sample: on the 185 runs recorded after it was chosen
(``--since-bank``) it ties the plain vote of 3 and trails those of 5 and 8 (-6.5, p = 0.043;
-5.9, p = 0.071, at 512 tokens), while beating the greedy answer alone (findings 3.0l). Two
samples that agree against the greedy answer still outvote it, so
the vote keeps what self-consistency buys; a model whose samples are as good as its greedy
chain loses nothing but one sample's diversity.

The reply is the best sample that gave the winning answer, as a normal completion, with the
vote in ``router.votes``. When every sample drawn was cut by its cap before stating an answer,
the tokens of the undrawn samples buy one chain instead (``sequential.run_chain``), which is
the reply (``router.chain_after_cut``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, ClassVar

import anyio
import orjson

from router_models.answers import extract_answer, json_answer, lettered_options
from router_models.prompt import prompt_text
from router_models.voting import Ballot, is_settled, tally, winner
from service import sse
from service.errors import GatewayError, UpstreamError, error_json
from service.strategies.base import (
    Call,
    conform_chat_logprobs,
    conform_choice,
    may_set_temperature,
    reply_cap,
    router_info,
    structured_output,
    usage_body,
)
from service.strategies.sampling import Sample, draw
from service.upstream import Backend

# A sample's temperature when the client set none: votes over greedy samples are all alike.
# 0.7 is the temperature self-consistency is usually run at (Wang et al. 2023 use 0.5-0.7).
DEFAULT_VOTE_TEMPERATURE = 0.7


class ParallelVote:
    """Majority vote over up to ``plan.width`` samples of ``plan.depth_tokens`` tokens."""

    name: ClassVar[str] = "parallel_vote"

    async def complete(self, call: Call) -> dict[str, Any]:
        chosen = await run_vote(call)
        return completion_body(call, chosen)

    async def open_stream(self, call: Call) -> AsyncIterator[bytes]:
        return await stream_when_done(call, run_vote(call), "voting")


def depth_tokens(call: Call) -> int:
    """Tokens per sample (L): the plan's depth, else the budget shared by ``width`` samples;
    at most the client's ``max_tokens`` (``base.reply_cap``), since the sample that wins is the
    reply the client receives."""
    plan = call.plan
    if plan.depth_tokens is not None:
        depth = plan.depth_tokens
    elif plan.budget_tokens is None:
        depth = call.routed.max_tokens or call.settings.default_budget_tokens // plan.width
    else:
        depth = max(1, plan.budget_tokens // plan.width)
    return reply_cap(call, depth)


def first_wave(width: int, settings: Any, backend: Backend | None = None) -> int:
    """Samples of a vote's first wave: ``vote_first_wave`` (the backend's own when it has
    one, ``UpstreamSettings``), or, when that is the whole vote and ``vote_majority_first``
    is on, a strict majority of it (``width // 2 + 1``): if the majority agrees, the remaining
    samples cannot outvote it (``is_settled``), so they are never drawn."""
    own = backend.vote_first_wave if backend is not None else None
    wave = min(own or settings.vote_first_wave, width)
    if settings.vote_majority_first and wave == width and width > 2:
        return width // 2 + 1
    return wave


async def run_vote(call: Call) -> Sample:
    """Draw waves of samples until the vote is settled or the width or budget is spent;
    returns the chosen sample and fills ``call.report``. A vote whose samples so far were all
    cut before stating an answer stops drawing and returns one chain of the undrawn samples'
    tokens (``_chain_of_the_rest``), or its first sample when that chain cannot run.

    Raises:
        UpstreamError (502) or the first failure's own error: every sample failed.
    """
    plan, settings = call.plan, call.settings
    depth = depth_tokens(call)
    overrides = None if (call.routed.body.get("temperature") is not None
                         or not call.backend.temperature) else {
        "temperature": DEFAULT_VOTE_TEMPERATURE}
    greedy_first = settings.vote_greedy_first and may_set_temperature(call)
    threshold = call.backend.vote_stop_threshold or settings.vote_stop_threshold
    # "C) 12" reads as the option C only when the prompt offers lettered options.
    options = lettered_options(_prompt_of(call))
    structured = structured_output(call.routed.body)
    samples: list[Sample] = []
    ballots: list[Ballot] = []
    failures: list[GatewayError] = []
    drawn = 0
    early_stop = no_answer = cut = False
    rest: int | None = None
    while drawn < plan.width:
        wave = min(first_wave(plan.width, settings, call.backend) if drawn == 0
                   else settings.vote_wave, plan.width - drawn)
        # Greedy first: the greedy sample comes first in the list, so a tie goes to its
        # answer (``voting.winner``: ties go to the answer seen first).
        new, failed = await draw(call, wave, depth, first_sample=drawn, body_overrides=overrides,
                                 greedy_first=greedy_first and drawn == 0)
        if not new and not failed:
            break  # the budget is spent
        drawn += wave
        samples += new
        failures += failed
        # A sample cut by its cap votes only with an answer it stated: its last line is
        # mid-reasoning, and cut samples agreeing on one settled votes on noise (outcome bank,
        # graph connectivity: votes of 3 right 10% of the time read leniently, 28% strictly).
        # Structured output's answer is its whole JSON value, not its last line ("}").
        ballots += [Ballot(json_answer(s.text) if structured else
                           extract_answer(s.text, options=options,
                                          strict=s.finish_reason == "length"),
                           s.confidence or 1.0) for s in new]
        if call.ledger.overrun:
            break
        if drawn < plan.width and _unanswerable(samples, ballots):
            # Finished samples that state no answer (code, prose) cannot be tallied, and more
            # of them settle nothing: the vote would draw its whole width to return the first.
            no_answer = early_stop = True
            break
        if drawn < plan.width and _all_cut(samples, ballots):
            # Every sample so far was cut before it stated an answer: the prompt needs more
            # than this depth, so more samples of it are mostly cut too and cast no vote
            # (outcome bank, first waves of 3 all cut at 64-256 tokens: 4-25% of the later
            # samples answered). The undrawn samples' tokens go to one longer chain instead,
            # when they buy one (``_chain_budget``).
            rest = _chain_budget(call, (plan.width - drawn) * depth, depth)
            if rest is not None:
                cut = True
                break
        if drawn < plan.width and is_settled(tally(ballots), remaining=plan.width - drawn,
                                             threshold=threshold):
            early_stop = True
            break
    if not samples:
        if failures and all(type(f) is type(failures[0]) for f in failures):
            raise failures[0]
        raise UpstreamError("every sample of the vote failed", code="all_samples_failed")
    call.answer_samples = [(s.text, s.finish_reason, depth) for s in samples]
    counts = tally(ballots)
    best = winner(counts)
    sampled = _samples_vary(call.routed.body)
    if best is not None and sampled:
        call.vote_first_agrees = ballots[0].answer == best
    call.report.update({
        "votes": {answer: _round(v) for answer, v in counts.items()},
        "winner": best,
        "samples": len(samples),
        "max_samples": plan.width,
        "early_stop": early_stop,
        "samples_saved": plan.width - drawn if early_stop else 0,
        "failed_samples": len(failures),
        "cut_samples": sum(s.finish_reason == "length" for s in samples),
        "depth_tokens": depth,
        # not when the backend refused the greedy sample's temperature: it ran at its default
        "greedy_first": greedy_first and call.backend.temperature,
    })
    if no_answer:
        call.report["no_answer"] = True
    chain = await _chain_of_the_rest(call, rest) if cut else None
    if chain is not None:
        call.report["chain_after_cut"] = True
        call.report["winner"] = extract_answer(chain.text, options=options)
        if sampled:
            # The reply is the chain's, and the first sample was cut before any answer: one
            # answer of this depth would have had none, so this vote overturned it.
            call.vote_first_agrees = False
        return chain
    return _best_sample(samples, ballots, best)


# A chain replaces a cut vote's undrawn samples only when its cap is at least this many times
# the samples' depth. Outcome bank (``bench.cut_first_wave``, first waves of 3 all cut at
# 64-170 tokens a sample): a chain of twice the depth stated the right answer on 22, 39, 47
# and 32 items where drawing on was right on 22, 33, 37 and 31; one of 1.5 times on 6, 23,
# 26 and 22. A chain no longer than the samples (a client's ``max_tokens`` caps both) would
# be one more sample with a forced answer, and drawing on does better there.
CHAIN_OVER_DEPTH = 2


def _chain_budget(call: Call, rest_tokens: int, depth: int) -> int | None:
    """The budget of the chain that would replace a cut vote's undrawn samples:
    ``rest_tokens`` (their tokens), at most what the ledger has left; None when the chain it
    buys (``sequential.caps``: the client's ``max_tokens`` and the forced answer's reserve
    come off) is shorter than ``CHAIN_OVER_DEPTH`` times the samples' ``depth``."""
    # imported here: sequential imports this module's ``completion_body``
    from service.strategies.sequential import caps

    left = call.ledger.remaining
    budget = rest_tokens if left is None else min(rest_tokens, left)
    if budget < 1 or call.ledger.overrun:
        return None
    chain_cap, _ = caps(call, budget)
    return budget if chain_cap >= CHAIN_OVER_DEPTH * depth else None


async def _chain_of_the_rest(call: Call, budget_tokens: int | None) -> Sample | None:
    """One chain (``sequential.run_chain``: its cap, its forced answer) of ``budget_tokens``
    (``_chain_budget``), at ``chain_temperature`` when the client chose no sampling; None
    when the chain failed (the vote's cut samples stand)."""
    from service.strategies.sequential import run_chain

    if budget_tokens is None:
        return None
    # One chain's answer is the reply, so it is decoded as the gateway decodes every chain it
    # plans (``chain_temperature``, greedy by default) unless the client chose how to sample.
    temperature = call.settings.chain_temperature if may_set_temperature(call) else None
    try:
        return await run_chain(call, budget_tokens, temperature=temperature)
    except GatewayError:
        # counted (``Metered``) like any failed sample; a chain that cannot run leaves the
        # vote's answer as it was
        call.report["failed_samples"] = call.report.get("failed_samples", 0) + 1
        return None


def _samples_vary(body: dict[str, Any]) -> bool:
    """Whether a vote's samples are draws that may differ: not at ``temperature`` 0, which
    a client naming ``parallel_vote`` may ask for. Greedy samples repeat one answer, so their
    votes agree with their first sample by construction and say nothing about what a sampled
    vote buys over one answer (``Call.vote_first_agrees``)."""
    temperature = body.get("temperature")
    return isinstance(temperature, bool) or not isinstance(temperature, int | float) or (
        temperature > 0)


def _all_cut(samples: list[Sample], ballots: list[Ballot]) -> bool:
    """True when samples were drawn, every one was cut by its cap, and none stated an answer
    to vote with."""
    return bool(samples) and all(s.finish_reason == "length" for s in samples) and not any(
        b.answer for b in ballots)


def _unanswerable(samples: list[Sample], ballots: list[Ballot]) -> bool:
    """True when samples were drawn, every one finished (not cut by its cap, which a longer
    draw might not be), and none stated an answer to vote with."""
    return bool(samples) and all(s.finish_reason != "length" for s in samples) and not any(
        b.answer for b in ballots)


def _prompt_of(call: Call) -> str:
    body = call.routed.body
    if call.routed.endpoint == "chat":
        return prompt_text(body.get("messages") or [])
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _best_sample(samples: list[Sample], ballots: list[Ballot], best: str | None) -> Sample:
    """The most confident sample that gave the winning answer (the first when there are no
    confidences); the first sample when no sample had an extractable answer."""
    if best is None:
        return samples[0]
    voters = [(s, b) for s, b in zip(samples, ballots, strict=True) if b.answer == best]
    return max(voters, key=lambda pair: pair[1].weight)[0]


def _round(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 4)


def completion_body(call: Call, chosen: Sample) -> dict[str, Any]:
    """A normal OpenAI completion whose one choice is ``chosen`` (with ``logprobs`` and a chat
    message's ``refusal``, null unless the backend gave them: ``conform_choice``)."""
    reply = chosen.reply
    call.answer_text = chosen.text
    body: dict[str, Any] = {"id": call.response_id}
    body.update({k: reply[k] for k in ("object", "created", "model", "system_fingerprint")
                 if k in reply})
    body["choices"] = [conform_choice({**chosen.choice, "index": 0})]
    body["usage"] = usage_body(call)
    body["router"] = router_info(call)
    return body


async def stream_when_done(call: Call, work: Coroutine[Any, Any, Sample],
                           activity: str) -> AsyncIterator[bytes]:
    """The SSE body of a strategy that knows its answer only at the end (``parallel_vote``,
    ``search``): an SSE comment naming the ``activity`` every ``keepalive_s`` seconds while
    ``work`` runs, then the chosen answer as chunks, the usage chunk when asked, and
    ``[DONE]``; an error event instead when ``work`` fails once the stream has started.

    The response starts only when the first keep-alive is due or ``work`` has ended, so a
    refusal that comes back at once (a prompt over the model's context, a field the backend
    rejects) reaches the client as its HTTP status, as a direct stream's does.

    Raises:
        GatewayError: ``work`` failed within the first ``keepalive_s`` seconds.
    """
    task = asyncio.create_task(work)
    try:
        await asyncio.wait({task}, timeout=call.settings.keepalive_s)
        if task.done():
            task.result()  # raises the refusal before any byte is sent
    except BaseException:
        await _stopped(task)
        raise
    return _stream_when_done(call, task, activity)


async def _stopped(task: asyncio.Task[Sample]) -> None:
    """Cancel ``task`` if it still runs and wait until it has ended: the calls it abandons
    are charged what they may have generated (``service.strategies.metered``) as they end,
    and the request is recorded right after (the client went away, or the shutdown deadline
    passed). Shielded: anyio cancels the response's task again at every await."""
    if task.done():
        return
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait({task})


async def _stream_when_done(call: Call, task: asyncio.Task[Sample],
                            activity: str) -> AsyncIterator[bytes]:
    try:
        while not task.done():
            yield sse.comment_event(activity)
            await asyncio.wait({task}, timeout=call.settings.keepalive_s)
        chosen = task.result()
    except GatewayError as exc:
        call.stream_error = exc
        yield sse.data_event(error_json(exc))
        yield sse.DONE
        return
    finally:
        await _stopped(task)
    for chunk in answer_chunks(call, chosen):
        yield sse.data_event(orjson.dumps(chunk))
    yield sse.DONE


def answer_chunks(call: Call, chosen: Sample) -> list[dict[str, Any]]:
    """A finished answer as stream chunks: the content (or text) in one delta, with the
    chosen sample's ``logprobs`` when it has them (a completions choice always has the key,
    null when there are none, as OpenAI's chunks do), the finish reason, then the usage
    chunk when the client asked for it; every chunk carries the backend's
    ``system_fingerprint``."""
    reply = chosen.reply
    call.answer_text = chosen.text
    chat = call.routed.endpoint == "chat"
    base = {"id": call.response_id, "object": "chat.completion.chunk" if chat
            else "text_completion", "created": reply.get("created", int(time.time())),
            "model": reply.get("model", call.upstream_model)}
    if reply.get("system_fingerprint") is not None:
        base["system_fingerprint"] = reply["system_fingerprint"]
    if chat:
        message = chosen.choice.get("message") or {}
        delta = {k: v for k, v in message.items() if v is not None}
        delta.setdefault("role", "assistant")
        if isinstance(delta.get("tool_calls"), list):
            # a stream's tool calls carry their position (OpenAI's ChoiceDeltaToolCall.index)
            delta["tool_calls"] = [{**tool, "index": i} if isinstance(tool, dict) else tool
                                   for i, tool in enumerate(delta["tool_calls"])]
        content = {"index": 0, "delta": delta, "finish_reason": None}
    else:
        content = {"index": 0, "text": chosen.text, "logprobs": None, "finish_reason": None}
    if chosen.choice.get("logprobs") is not None:
        # the one delta holds the whole answer, so it holds the whole answer's logprobs,
        # as the JSON reply of the same request does
        content["logprobs"] = (conform_chat_logprobs(chosen.choice["logprobs"]) if chat
                               else chosen.choice["logprobs"])
    finish = {"index": 0, "delta": {}, "finish_reason": chosen.finish_reason} if chat else {
        "index": 0, "text": "", "logprobs": None, "finish_reason": chosen.finish_reason}
    chunks = [{**base, "choices": [content]}, {**base, "choices": [finish]}]
    if call.routed.include_usage:
        chunks.append({**base, "choices": [], "usage": usage_body(call),
                       "router": router_info(call)})
    return chunks
