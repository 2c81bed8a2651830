"""Off-policy replay reads the log right: the target gets each row's logged controls through a
frozen copy, positivity is checked per prompt, and failures count as wrong."""

from __future__ import annotations

from router_models.experiments.replay import (
    Controls,
    LoggedDecision,
    plan_key,
    replay,
    target_distribution,
)
from router_models.plan import Plan, Scores
from router_models.policies import LearnedPolicy, parse_policy
from router_models.policies.fixed import fixed_plan
from service.experiments import logged_decisions
from service.store import Record

SCORES = Scores(0.5, 0.5, 0.1, "numeric")


def _row(plan: Plan, correct: float | None, **extra) -> LoggedDecision:  # type: ignore[no-untyped-def]
    return LoggedDecision(SCORES, plan, extra.pop("propensity", 1.0), 100.0, correct, **extra)


def test_replay_asks_a_frozen_copy_and_leaves_the_live_policy_alone():
    policy = LearnedPolicy(exploration=0.5, seed=7)
    before = policy.rng.getstate()
    rows = [_row(Plan("direct", 256), 1.0, propensity=0.5) for _ in range(20)]
    replay(rows, policy, max_unsupported=1.0)
    assert policy.rng.getstate() == before


def test_the_logged_controls_reach_the_target():
    forced = Controls(strategy="sequential")
    logged = fixed_plan("sequential", 256)
    rows = [_row(logged, float(i % 2), controls=forced,
                 support=frozenset({plan_key(logged)})) for i in range(10)]
    target = parse_policy("fixed:direct@256")
    # The request forced sequential: the target, told so, picks the logged plan.
    assert target_distribution(target, SCORES, forced) == {plan_key(logged): 1.0}
    result = replay(rows, target)
    assert result.supported and result.accuracy["ips"].value == 0.5
    # Without the controls it would have picked direct, which these rows cannot support.
    bare = [_row(logged, r.correct, support=r.support) for r in rows]
    assert not replay(bare, target).supported


def test_positivity_is_checked_per_prompt():
    direct, chain = fixed_plan("direct", 256), fixed_plan("sequential", 256)
    # Half the prompts could only ever get the chain: the direct plan, though explored on
    # the other half, is not supported there.
    rows = ([_row(direct, 1.0, propensity=0.5,
                  support=frozenset({plan_key(direct), plan_key(chain)})) for _ in range(10)]
            + [_row(chain, 0.0, propensity=1.0, support=frozenset({plan_key(chain)}))
               for _ in range(10)])
    result = replay(rows, parse_policy("fixed:direct@256"))
    assert not result.supported and result.unsupported == 0.5


def _record(i: int, status: str, feedback: float | None) -> Record:
    plan = fixed_plan("direct", 256)
    return Record(
        decision_id=f"dec_{i}", response_id=None, time_s=float(i), endpoint="chat",
        key_name=None, model="m", strategy="direct", policy="fixed:direct@256", arm=None,
        experiment=None, status=status, budget_tokens=256, prompt_tokens=1,
        completion_tokens=50, estimated=False, upstream_calls=1, samples=1, search_calls=0,
        duration_s=0.1, wait_s=0.1, stream=False, scores=SCORES.as_dict(),
        plan={**vars(plan), "policy": "fixed:direct@256", "probability": 1.0},
        feedback_score=feedback)


def test_failed_requests_count_as_wrong_and_refusals_are_left_out():
    records = [_record(0, "200", 1.0), _record(1, "502", None), _record(2, "504", None),
               _record(3, "429", None), _record(4, "200", None)]
    rows = logged_decisions(records)
    assert [r.correct for r in rows] == [1.0, 0.0, 0.0, None]
    result = replay(rows, parse_policy("fixed:direct@256"))
    assert result.feedback == 3 and abs(result.accuracy["snips"].value - 1 / 3) < 1e-9



def test_intervals_stay_within_what_accuracy_and_tokens_can_be():
    # A target that a 20% arm ran, right on 9 of its 10 prompts, among 40 rows of the other
    # arm: the t interval of the IPS terms (5 or 0 each) reached past 1 (and, for the
    # tokens of a rarely logged plan, below 0), though accuracy lies in [0, 1] and tokens
    # are never negative.
    direct, chain = fixed_plan("direct", 256), fixed_plan("sequential", 256)
    support = frozenset({plan_key(direct), plan_key(chain)})
    rows = ([_row(chain, float(i < 9), propensity=0.2, support=support) for i in range(10)]
            + [_row(direct, 0.0, propensity=0.8, support=support) for _ in range(40)])
    result = replay(rows, parse_policy("fixed:sequential@256"))
    assert result.supported
    for key in ("ips", "snips", "dr"):
        low, high = result.accuracy[key].ci95
        assert 0.0 <= low <= high <= 1.0, (key, low, high)
        low, high = result.mean_tokens[key].ci95
        assert 0.0 <= low <= high, (key, low, high)
