"""Generated tasks: answers are right by construction and depth is what was asked."""

from __future__ import annotations

import re

import numpy as np
import pytest

from router_models.generated import arithmetic_chain, generate, graph_connectivity


def _reachable(edges: list[tuple[int, int]], start: int) -> set[int]:
    seen, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x == node and y not in seen:
                    seen.add(y)
                    frontier.append(y)
    return seen


@pytest.mark.parametrize("depth", [1, 2, 5, 9])
def test_graph_answer_is_the_target_reachable_from_the_source(depth):
    rng = np.random.default_rng(depth)
    for _ in range(20):
        task = graph_connectivity(rng, depth)
        edges = [(int(a), int(b)) for a, b in re.findall(r"(\d+)-(\d+)", task.question)]
        s, t1, t2 = (int(x) for x in re.search(
            r"Is node (\d+) connected to node (\d+) \(t1\) or to node (\d+)", task.question
        ).groups())
        reach = _reachable(edges, s)
        assert (t1 in reach) != (t2 in reach)
        assert task.answer == ("t1" if t1 in reach else "t2")
        assert task.depth == depth


def test_arithmetic_chain_has_k_steps_and_is_reproducible():
    a = arithmetic_chain(np.random.default_rng(3), 6)
    b = arithmetic_chain(np.random.default_rng(3), 6)
    assert a == b and a.depth == 6
    assert a.question.count(".") >= 7 and int(a.answer) >= 0


def test_generate_is_deterministic_and_rejects_bad_depths():
    assert list(generate(1, 5, 5)) == list(generate(1, 5, 5))
    with pytest.raises(ValueError):
        graph_connectivity(np.random.default_rng(0), 0)
    with pytest.raises(ValueError):
        arithmetic_chain(np.random.default_rng(0), 0)
