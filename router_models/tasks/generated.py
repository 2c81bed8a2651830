"""Generated suites that need no data: bridge-graph connectivity, k-step arithmetic chains and
independent multiple-choice recognition. Item i of a suite is a pure function of i, so any
``--limit`` gives a prefix of the same sequence; every answer is computed, never stored.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

from router_models.tasks import TaskItem

# Graph depth (bridges between the source and its target) cycles through these; the simulation
# family graph_connectivity maps difficulty 0..1 to steps 2..24, the same range.
GRAPH_DEPTHS = (2, 3, 4, 6, 8, 12, 16, 20, 24)
GRAPH_BLOCK_NODES = 3
# Arithmetic chain lengths; the family arithmetic_chain maps difficulty 0..1 to steps 2..16.
CHAIN_STEPS = (2, 3, 4, 6, 8, 10, 12, 16)
MC_LEVELS = 5


def _difficulty(value: int, values: tuple[int, ...]) -> float:
    return round((value - values[0]) / (values[-1] - values[0]), 4)


def reachable(edges: Iterable[tuple[int, int]], source: int) -> set[int]:
    """The nodes reachable from ``source`` in the undirected graph ``edges`` (breadth-first
    search), ``source`` included."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    seen, queue = {source}, deque([source])
    while queue:
        node = queue.popleft()
        for nxt in neighbours.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _bridge_chain(rng: random.Random, names: list[int],
                  depth: int) -> tuple[list[tuple[int, int]], int, int]:
    """One component: depth + 1 small clusters joined in a row by single bridge edges, so
    every path from its first cluster to its last crosses ``depth`` bridges. Returns (edges,
    a node of the first cluster, a node of the last)."""
    edges: list[tuple[int, int]] = []
    blocks = [names[i:i + GRAPH_BLOCK_NODES]
              for i in range(0, (depth + 1) * GRAPH_BLOCK_NODES, GRAPH_BLOCK_NODES)]
    for block in blocks:  # a cycle through the cluster: connected, no dead ends
        edges += [(block[i], block[(i + 1) % len(block)]) for i in range(len(block))]
    for left, right in zip(blocks, blocks[1:], strict=False):
        edges.append((rng.choice(left), rng.choice(right)))
    return edges, rng.choice(blocks[0]), rng.choice(blocks[-1])


def graph_item(index: int) -> TaskItem:
    """Graph connectivity item ``index``: a bridge graph after Mirtaheri et al. 2025 ("Let Me
    Think!"): two disconnected components of the same shape, each a row of small clusters
    joined by bridge edges; the source sits at one end of one component, and the two candidate
    targets at the far ends of both. Depth (bridges to cross) is the difficulty knob; the
    answer is verified by breadth-first search.

    Raises:
        AssertionError: never, unless the construction is broken (BFS disagrees).
    """
    rng = random.Random(f"graph_connectivity-{index}")
    depth = GRAPH_DEPTHS[index % len(GRAPH_DEPTHS)]
    size = (depth + 1) * GRAPH_BLOCK_NODES
    names = rng.sample(range(10, 10 + 20 * size), 2 * size)
    edges_a, source, target = _bridge_chain(rng, names[:size], depth)
    edges_b, _, other = _bridge_chain(rng, names[size:], depth)
    edges = [(a, b) if rng.random() < 0.5 else (b, a) for a, b in edges_a + edges_b]
    rng.shuffle(edges)
    found = reachable(edges, source)
    assert target in found and other not in found, "bridge graph construction is broken"
    first, second = (target, other) if rng.random() < 0.5 else (other, target)
    question = (
        f"An undirected graph has these edges: {', '.join(f'{a}-{b}' for a, b in edges)}. "
        f"Exactly one of node {first} and node {second} is connected to node {source} by a "
        f"path. Which one is it: {first} or {second}?")
    return TaskItem(suite="graph_connectivity", item_id=f"graph-{index:05d}",
                    family="graph_connectivity",
                    difficulty=_difficulty(depth, GRAPH_DEPTHS), question=question,
                    answer=str(target), kind="node", choices=(str(first), str(second)))


def graph_connectivity(limit: int | None) -> list[TaskItem]:
    """The first ``limit`` graph items (default 90: ten per depth)."""
    return [graph_item(i) for i in range(90 if limit is None else limit)]


def chain_item(index: int) -> TaskItem:
    """Arithmetic chain item ``index``: a start value and k operations (add, subtract,
    multiply by 2 or 3) applied in order; k is the difficulty knob. Values stay in 0..999."""
    rng = random.Random(f"arithmetic_chain-{index}")
    steps = CHAIN_STEPS[index % len(CHAIN_STEPS)]
    value = rng.randint(2, 9)
    words = [f"Start with {value}."]
    for _ in range(steps):
        options = ["add"]
        if value >= 2:
            options.append("subtract")
        if value <= 300:
            options.append("multiply")
        op = rng.choice(options)
        if op == "add":
            amount = rng.randint(2, 19)
            value += amount
            words.append(f"Add {amount}.")
        elif op == "subtract":
            amount = rng.randint(1, min(19, value - 1))
            value -= amount
            words.append(f"Subtract {amount}.")
        else:
            factor = rng.choice((2, 3))
            value *= factor
            words.append(f"Multiply by {factor}.")
    words.append("What number do you end with?")
    return TaskItem(suite="arithmetic_chain", item_id=f"chain-{index:05d}",
                    family="arithmetic_chain",
                    difficulty=_difficulty(steps, CHAIN_STEPS), question=" ".join(words),
                    answer=str(value), kind="number")


def arithmetic_chain(limit: int | None) -> list[TaskItem]:
    """The first ``limit`` arithmetic chains (default 80: ten per length)."""
    return [chain_item(i) for i in range(80 if limit is None else limit)]


def is_prime(n: int) -> bool:
    """Primality by trial division (n < 10**8 in practice here)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def mc_item(index: int) -> TaskItem:
    """Independent multiple-choice item ``index``: which of four numbers is prime? One
    recognition step, no chain of dependent steps. Difficulty is the numbers' size (two digits
    at 0, six at 1); the three distractors are odd composites not divisible by 5."""
    rng = random.Random(f"mc_guess-{index}")
    level = index % MC_LEVELS
    low, high = 10 ** (1 + level), 10 ** (2 + level) - 1
    low = max(low, 11)
    prime = rng.randint(low, high)
    while not is_prime(prime):
        prime = rng.randint(low, high)
    distractors: set[int] = set()
    while len(distractors) < 3:
        n = rng.randint(low, high) | 1
        if n % 5 and not is_prime(n) and n <= high:
            distractors.add(n)
    numbers = [prime, *sorted(distractors)]
    rng.shuffle(numbers)
    letters = ("A", "B", "C", "D")
    lines = [f"{letter}) {n}" for letter, n in zip(letters, numbers, strict=True)]
    question = "Which of these numbers is prime?\n" + "\n".join(lines)
    return TaskItem(suite="mc_guess", item_id=f"mc-{index:05d}", family="independent_mc",
                    difficulty=level / (MC_LEVELS - 1), question=question,
                    answer=letters[numbers.index(prime)], kind="choice", choices=letters)


def mc_guess(limit: int | None) -> list[TaskItem]:
    """The first ``limit`` multiple-choice items (default 100)."""
    return [mc_item(i) for i in range(100 if limit is None else limit)]
