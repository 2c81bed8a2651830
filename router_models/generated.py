"""Generated training tasks whose true reasoning depth is known by construction.

Two families, both deterministic given a ``numpy.random.Generator``:

- ``graph_connectivity``: the two-bridge-graph task of Mirtaheri et al. 2025 ("Let Me Think! A
  Long Chain-of-Thought Can Be Worth Exponentially Many Short Ones", arXiv 2505.21825): given an
  edge list, is the source ``s`` connected to ``t1`` or to ``t2``? The graph is two disjoint
  copies of a bridge graph: ``depth`` small dense clusters in a row, consecutive clusters joined
  by one bridge edge; ``s`` sits in the first cluster of one copy, ``t1`` and ``t2`` in the last
  clusters of the two copies. Finding the path takes one step per bridge, so a short guess is
  a coin flip and the true depth is ``depth``.
- ``arithmetic_chain``: ``k`` dependent arithmetic steps, each using the previous result; depth
  ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_NAMES = ("Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia")
_ITEMS = ("apples", "coins", "stickers", "marbles", "books", "tokens", "shells", "cards")


@dataclass(frozen=True)
class GeneratedTask:
    """One generated prompt with its answer and its true depth (sequential steps needed)."""

    family: str
    question: str
    answer: str
    depth: int


def graph_connectivity(rng: np.random.Generator, depth: int, cluster_size: int = 3
                       ) -> GeneratedTask:
    """A two-bridge-graph connectivity question (Mirtaheri et al. 2025).

    Args:
        rng: the random source; the same state gives the same task.
        depth: clusters per bridge graph (>= 1); the number of bridges crossed is depth - 1.
        cluster_size: nodes per cluster (>= 2); each cluster is a clique.

    Returns:
        A ``GeneratedTask`` with family ``graph_connectivity``, answer ``t1`` or ``t2``.

    Raises:
        ValueError: when depth < 1 or cluster_size < 2.
    """
    if depth < 1 or cluster_size < 2:
        raise ValueError("depth must be >= 1 and cluster_size >= 2")
    n_nodes = 2 * depth * cluster_size
    labels = [int(x) for x in rng.permutation(np.arange(10, 10 + 4 * n_nodes))[:n_nodes]]
    edges: list[tuple[int, int]] = []
    copies = []
    for c in range(2):
        clusters = []
        for d in range(depth):
            base = (c * depth + d) * cluster_size
            nodes = [labels[base + i] for i in range(cluster_size)]
            clusters.append(nodes)
            edges += [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
        for left, right in zip(clusters, clusters[1:], strict=False):
            edges.append((left[int(rng.integers(cluster_size))],
                          right[int(rng.integers(cluster_size))]))
        copies.append(clusters)
    source_copy = int(rng.integers(2))
    s = copies[source_copy][0][int(rng.integers(cluster_size))]
    # s must not be a target itself: targets come from the last cluster, avoiding s.
    t = []
    for c in range(2):
        choices = [n for n in copies[c][-1] if n != s]
        t.append(choices[int(rng.integers(len(choices)))])
    order = rng.permutation(len(edges))
    edge_text = ", ".join(
        f"{a}-{b}" if rng.random() < 0.5 else f"{b}-{a}"
        for a, b in (edges[int(i)] for i in order))
    question = (f"Here is an undirected graph given by its edge list: {edge_text}. "
                f"Is node {s} connected to node {t[0]} (t1) or to node {t[1]} (t2)? "
                "Answer t1 or t2.")
    return GeneratedTask("graph_connectivity", question, f"t{source_copy + 1}", depth)


def arithmetic_chain(rng: np.random.Generator, k: int) -> GeneratedTask:
    """A word problem of ``k`` dependent arithmetic steps (each uses the previous result).

    Args:
        rng: the random source.
        k: the number of steps (>= 1), which is the true depth.

    Returns:
        A ``GeneratedTask`` with family ``arithmetic_chain`` and an integer answer.

    Raises:
        ValueError: when k < 1.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    name = _NAMES[int(rng.integers(len(_NAMES)))]
    item = _ITEMS[int(rng.integers(len(_ITEMS)))]
    value = int(rng.integers(2, 30))
    sentences = [f"{name} starts with {value} {item}."]
    for step in range(k):
        op = int(rng.integers(4))
        if op == 0:
            n = int(rng.integers(2, 20))
            value += n
            text = f"gets {n} more {item}"
        elif op == 1 and value > 2:
            n = int(rng.integers(1, value))
            value -= n
            text = f"gives away {n} {item}"
        elif op == 2 and value < 200:
            n = int(rng.integers(2, 4))
            value *= n
            text = f"ends up with {n} times as many {item}"
        else:
            n = int(rng.integers(1, 12))
            value += n
            text = f"finds {n} {item}"
        lead = ("Then" if step else "First") if rng.random() < 0.5 else "After that"
        sentences.append(f"{lead}, {name} {text}.")
    sentences.append(f"How many {item} does {name} have now?")
    return GeneratedTask("arithmetic_chain", " ".join(sentences), str(value), k)


def generate(seed: int, n_graph: int, n_chain: int, max_graph_depth: int = 8,
             max_chain_depth: int = 10) -> Iterator[GeneratedTask]:
    """``n_graph`` connectivity and ``n_chain`` arithmetic tasks, depths drawn uniformly from
    1..max, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(n_graph):
        yield graph_connectivity(rng, int(rng.integers(1, max_graph_depth + 1)))
    for _ in range(n_chain):
        yield arithmetic_chain(rng, int(rng.integers(1, max_chain_depth + 1)))
