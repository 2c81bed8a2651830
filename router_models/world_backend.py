"""SIMULATION: one randomized world (``router_models.worlds``) in the shape the simulated
reasoner server (``service.sim``, ``ttc-router sim --world-seed N``) serves, so that held-out
worlds can be evaluated over HTTP too.

``WorldReasoner`` answers like ``router_models.simulation.World`` (``answer_distribution``,
``draw``, ``families``), keyed by a prompt's family (its kind) and difficulty; every prompt of
the world's ``train`` and ``eval`` splits is registered as a ``TaskItem`` (``items``) whose
difficulty identifies it, so the server finds its hidden truth. Unknown prompts of a kind get
the kind's average prompt at that difficulty. Over HTTP the scattered wrong answers are spread
over the item's other answers (a few for lettered options), an approximation of the bench's
never-agreeing scattered answers.
"""

from __future__ import annotations

import math
import random

from router_models.simulation import CORRECT, NO_ANSWER, wrong_label
from router_models.tasks import TaskItem
from router_models.world_prompts import KINDS, LETTERS, OPEN
from router_models.worlds import (
    MAX_TOKENS,
    Prompts,
    RandomWorld,
    draw_world,
    single_prompt,
)

# "The answer is X." in the simulator's one-word-per-token text.
ANSWER_WORDS = 4


class WorldReasoner:
    """SIMULATION: world ``seed`` as the simulated reasoner's world (module docstring).

    Args:
        seed: the world's seed (``draw_world``).
        per_split: prompts registered from each of the ``train`` and ``eval`` splits, drawn
            by traffic share.
    """

    answer_tokens = ANSWER_WORDS
    default_max_tokens = 512

    def __init__(self, seed: int, per_split: int = 400):
        self.world: RandomWorld = draw_world(seed)
        self.default_family = "guess"
        self._prompts: list[Prompts] = []
        self._index: dict[tuple[str, float], tuple[int, int]] = {}
        self.items: list[TaskItem] = []
        for split in ("train", "eval"):
            prompts = self.world.prompts(per_split, split=split)
            self._prompts.append(prompts)
            for i in range(len(prompts)):
                item = _item(seed, split, i, prompts)
                self._index[(item.family, item.difficulty)] = (len(self._prompts) - 1, i)
                self.items.append(item)

    def families(self) -> list[str]:
        """The kinds of prompt, as family names."""
        return list(KINDS)

    def _prompt(self, family: str, difficulty: float) -> Prompts:
        found = self._index.get((family, difficulty))
        if found is not None:
            return single_prompt(self._prompts[found[0]], found[1])
        kind = family if family in KINDS else self.default_family
        return self.world.average_prompt(kind, min(1.0, max(0.0, float(difficulty))))

    def answer_distribution(self, family: str, difficulty: float, depth_tokens: int,
                            searched: bool = False, temperature: float = 1.0
                            ) -> dict[str, float]:
        """One sample's answer distribution (label -> probability; ``NO_ANSWER`` for a sample
        cut before its answer), reshaped by ``temperature`` like ``simulation.World``."""
        prompt = self._prompt(family, difficulty)
        parts = self.world.sample_parts(prompt, depth_tokens, searched, calls=1)
        answered, right, top, other = (float(x[0]) for x in parts)
        choices = max(2, int(round(1 / float(prompt.chance[0]))))
        scattered = list(range(2, choices))
        dist = {CORRECT: answered * right, wrong_label(1): answered * top}
        if scattered:
            dist.update({wrong_label(j): answered * other / len(scattered) for j in scattered})
        else:
            dist[wrong_label(1)] += answered * other
        dist[NO_ANSWER] = 1 - answered
        return _temper(dist, temperature)

    def draw(self, rng: random.Random, family: str, difficulty: float, depth_tokens: int,
             searched: bool = False, temperature: float = 1.0) -> tuple[str, int]:
        """One sample: (label, completion tokens used). Its answer length is drawn; a sample
        whose length exceeds ``depth_tokens`` is cut (``NO_ANSWER``)."""
        prompt = self._prompt(family, difficulty)
        a = float(prompt.answer_tokens[0])
        think = min(MAX_TOKENS, float(prompt.params["think"][0]) * a)
        length = a * math.exp(float(prompt.params["answer_spread"][0]) * rng.gauss(0.0, 1.0))
        used = int(round(min(depth_tokens, max(length, think))))
        if length > depth_tokens:
            return NO_ANSWER, used
        dist = self.answer_distribution(family, difficulty, depth_tokens, searched, temperature)
        dist.pop(NO_ANSWER, None)
        labels = list(dist)
        label = rng.choices(labels, weights=[dist[x] for x in labels])[0]
        return label, used


def _item(seed: int, split: str, index: int, prompts: Prompts) -> TaskItem:
    """A registered prompt: its last user text as the question, a made-up gold answer of the
    right form (yes/no, a letter, or a number), and its difficulty (rounded, so it survives
    a JSON round trip) as its key."""
    messages = prompts.messages[index]
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    choices = int(round(1 / float(prompts.chance[index])))
    rng = random.Random(f"world-{seed}-{split}-{index}-answer")
    options: tuple[str, ...] = ()
    if choices == 2:
        kind, answer = "yes_no", rng.choice(("yes", "no"))
    elif choices < OPEN:
        options = tuple(LETTERS[:choices])
        kind, answer = "choice", rng.choice(options)
    else:
        kind, answer = "number", str(rng.randint(2, 999))
    return TaskItem(suite=f"world-{seed}", item_id=f"{split}-{index:05d}",
                    family=KINDS[int(prompts.kind[index])],
                    difficulty=round(float(prompts.difficulty[index]), 9), question=question,
                    answer=answer, kind=kind, choices=options)


def _temper(dist: dict[str, float], temperature: float) -> dict[str, float]:
    if temperature == 1.0:
        return dist
    if temperature <= 0:
        best = max(dist, key=lambda x: dist[x])
        return {x: (1.0 if x == best else 0.0) for x in dist}
    powered = {x: p ** (1.0 / temperature) for x, p in dist.items()}
    total = sum(powered.values())
    return {x: p / total for x, p in powered.items()}
