"""bench/exploration_share.py: the replay it reports from, and the old rule it compares with."""

from __future__ import annotations

import pytest

from bench import exploration_share
from router_models.policies.learned import LearnedPolicy


def test_a_replay_spends_at_most_the_share_and_reports_every_group() -> None:
    run = exploration_share.replay(seed=3, rounds=2, per_group=30)
    assert 0.0 < run.share <= LearnedPolicy().exploration
    assert set(run.strategies) == set(exploration_share.GROUPS)


def test_the_old_rule_is_a_running_mean_kept_per_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    rate = exploration_share.running_mean_rule()
    first, second = LearnedPolicy(seed=1), LearnedPolicy(seed=2)
    monkeypatch.setattr(first, "potential", lambda kind, alternatives: 0.1)
    monkeypatch.setattr(second, "potential", lambda kind, alternatives: 0.5)
    mean = exploration_share.RUNNING_MEAN_START
    for _ in range(3):
        mean += exploration_share.RUNNING_MEAN_SMOOTHING * (0.1 - mean)
        assert rate(first, 0, ["direct"]) == pytest.approx(0.05 * 0.1 / mean)
    # The other policy's mean starts afresh: its potential equals the start, a boost of one.
    assert rate(second, 0, ["direct"]) == pytest.approx(0.05)


def test_main_puts_the_shipped_rule_back(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = LearnedPolicy._exploration_rate
    monkeypatch.setattr("sys.argv", ["exploration_share", "--runs", "1", "--rounds", "1",
                                     "--per-group", "10"])
    assert exploration_share.main() == 0
    assert LearnedPolicy._exploration_rate is shipped
    out = capsys.readouterr().out
    assert out.startswith("SIMULATION") and "rule before 7 Dec" in out
