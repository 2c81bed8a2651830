"""SIMULATION: the prompt text of the randomized worlds (``router_models.worlds``): per kind of
prompt, a pool of question templates, and per world a phrasing drawn at random (which
templates, prefixes, instructions, options or not, distractors, system turns, chatty framing).

The text matters because the router reads only the text: it goes through the real classifier
(``router_models.classifier``), so a world whose guesses are phrased as open questions, or whose
chains carry a distracting paragraph, tests the classifier as much as the policy. The answers
are never needed (the world simulates correctness), so the contents only have to read like
real prompts of their kind: the templates follow the shapes of public benchmarks (MMLU,
CommonsenseQA, BIG-Bench Hard's sports understanding, causal judgement, navigate and
tracking-shuffled-objects, GSM8K, coin flips after Wei et al. 2022, bridge-graph connectivity
after Mirtaheri et al. 2025, HotpotQA's bridge and comparison questions), with invented names so
that no text is copied from a benchmark the classifier was trained on.

Kinds (``KINDS``): ``guess`` (independent guesses: knowledge, estimation, judgement),
``chain`` (compositional: multi-step arithmetic, state tracking, graph connectivity, word
problems), ``easy`` (one-liners) and ``fact`` (facts the model may lack: search).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("guess", "chain", "easy", "fact")
# The answer-pool size of an open answer (a number, a name, a phrase): chance is 1 / OPEN.
OPEN = 50
LETTERS = "ABCDE"

Template = Callable[[random.Random, float, bool], tuple[str, int]]
"""(rng, difficulty in [0, 1], with options) -> (question text, choices: 2 for yes/no, the
number of options, or ``OPEN``)."""

_SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "va", "shi", "del", "mar", "qu", "ben", "sa",
              "tel", "ro", "vin", "da", "nor", "gal", "pe", "zu", "har", "lin", "os", "ter")
_FIRST = ("Alice", "Bob", "Claire", "Dave", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jonas",
          "Kemal", "Lena", "Marta", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq")
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "coins", "stamps", "books",
          "cards", "shells")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
_SPORTS = (("striker", "scored a penalty kick"), ("point guard", "hit a three-pointer"),
           ("quarterback", "threw a touchdown pass"), ("pitcher", "threw a curveball"),
           ("goalie", "made a glove save"), ("shortstop", "turned a double play"),
           ("winger", "was called offside"), ("center", "won the face-off"))
_PLACES = ("kitchen", "garage", "library", "hospital", "airport", "forest", "classroom",
           "museum", "harbor", "bakery")
_OBJECTS = ("stethoscope", "rolling pin", "hymnal", "boarding pass", "chisel", "microscope",
            "anchor", "easel", "whisk", "compass")
_FIELDS = ("chemistry", "world history", "economics", "biology", "philosophy", "astronomy",
           "law", "psychology", "geography", "music theory")
_PROFESSIONS = ("novelist", "architect", "composer", "physicist", "film director", "painter",
                "economist", "poet", "mathematician", "sculptor")
_NATIONALITIES = ("Danish", "Chilean", "Korean", "Nigerian", "Austrian", "Peruvian",
                  "Finnish", "Indonesian", "Portuguese", "Kenyan")
_ANIMALS = (("spider", 8), ("cat", 4), ("bird", 2), ("ant", 6), ("horse", 4), ("octopus", 8))
_EASY_WORDS = ("cat", "house", "river", "light", "happy", "green", "stone", "music", "bread",
               "cloud")
_COUNTRIES = ("France", "Japan", "Brazil", "Canada", "Egypt", "Italy", "Kenya", "Spain",
              "India", "Mexico")


def name(rng: random.Random, syllables: int = 2) -> str:
    """An invented proper name (so no text comes from a real benchmark)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def _options(rng: random.Random, answers: list[str], count: int) -> tuple[str, int]:
    picks = rng.sample(answers, min(count, len(answers)))
    style = rng.choice(("{l}) {x}", "({l}) {x}", "{l}. {x}"))
    lines = [style.format(l=LETTERS[i], x=x) for i, x in enumerate(picks)]
    sep = rng.choice(("\n", " "))
    return sep.join(lines), len(picks)


# -- guess: independent guesses ---------------------------------------------------------------

def _knowledge(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    field = rng.choice(_FIELDS)
    stem = rng.choice((
        f"In {field}, which of the following best describes the {name(rng)} effect?",
        f"Which {rng.choice(_PROFESSIONS)} is credited with the {name(rng)} principle?",
        f"Which statement about {field} is correct?",
        f"What is the main cause of {name(rng).lower()}ism according to most {field} texts?"))
    if not options:
        return stem, OPEN
    answers = [f"the {name(rng)} {w}" for w in ("model", "law", "theory", "rule", "cycle")]
    text, n = _options(rng, answers, rng.choice((4, 4, 5)))
    return f"{stem}\n{text}", n


def _estimation(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    stem = rng.choice((
        f"Roughly how many {rng.choice(_ITEMS)} would fit in a school bus?",
        f"Estimate the height in meters of the tallest tree in {name(rng)} Forest.",
        f"About how long, in hours, would it take to walk from {name(rng)} to {name(rng)}?",
        f"Approximately what share of {rng.choice(_NATIONALITIES)} adults own a bicycle?"))
    if not options:
        return stem, OPEN
    base = rng.randint(2, 9)
    text, n = _options(rng, [str(base * 10 ** k) for k in range(5)], 4)
    return f"{stem}\n{text}", n


def _plausible(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    role, act = rng.choice(_SPORTS)
    who = f"{rng.choice(_FIRST)} {name(rng)}"
    if rng.random() < 0.5:
        return f'Is the following sentence plausible? "{who} {act}."', 2
    return f"Would a {role} like {who} ever say that they {act}? Answer yes or no.", 2


def _judgement(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    a, b = rng.sample(_FIRST, 2)
    story = (f"{a} left the gate of the {rng.choice(_PLACES)} open because {b} asked to keep "
             f"it open for the delivery. Later the dog ran away.")
    if options:
        return (f"{story} Did {a} intentionally let the dog out?\nOptions:\n- Yes\n- No", 2)
    return f"How would a typical person answer: {story} Did {a} cause the dog to run away?", 2


def _commonsense(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    obj = rng.choice(_OBJECTS)
    stem = rng.choice((f"Where would you most likely find a {obj}?",
                       f"What is a {obj} typically used for?",
                       f"Someone is holding a {obj}. Where are they probably?"))
    if not options:
        return stem, OPEN
    text, n = _options(rng, list(_PLACES), rng.choice((4, 5)))
    return f"{stem}\n{text}", n


# -- chain: compositional ----------------------------------------------------------------------

def _steps(d: float, low: int, high: int) -> int:
    return max(low, round(low + (high - low) * d))


def _arithmetic(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    value = rng.randint(2, 9)
    words = [rng.choice((f"Start with {value}.", f"Take the number {value}.",
                         f"x = {value}."))]
    for _ in range(_steps(d, 2, 14)):
        op = rng.choice(("add", "sub", "mul"))
        k = rng.randint(2, 12)
        words.append({"add": f"Add {k}.", "sub": f"Subtract {k}.",
                      "mul": f"Multiply by {rng.choice((2, 3))}."}[op])
    words.append(rng.choice(("What number do you end with?", "What is the result?",
                             "What is x now?")))
    return " ".join(words), OPEN


def _word_problem(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    who, other = rng.sample(_FIRST, 2)
    item = rng.choice(_ITEMS)
    parts = [f"{who} has {rng.randint(10, 60)} {item}."]
    events = (f"Then {who} buys {{k}} more {item}.", f"{who} gives {{k}} {item} to {other}.",
              f"After that, {other} returns half of what they received.",
              f"Each day {who} collects {{k}} more {item} for {{k2}} days.",
              f"{who} sells a third of the remaining {item} for ${{k}} each.")
    for _ in range(_steps(d, 1, 6)):
        parts.append(rng.choice(events).format(k=rng.randint(2, 9), k2=rng.randint(2, 5)))
    parts.append(rng.choice((f"How many {item} does {who} have now?",
                             f"How much money does {who} make in total?")))
    return " ".join(parts), OPEN


def _tracking(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    people = rng.sample(_FIRST, rng.choice((3, 5)))
    colours = rng.sample(_COLOURS, len(people))
    intro = ", ".join(f"{p} has {'an' if c[0] in 'aeiou' else 'a'} {c} ball"
                      for p, c in zip(people, colours, strict=True))
    swaps = [f"{' and '.join(rng.sample(people, 2))} swap balls."
             for _ in range(_steps(d, 2, 10))]
    ordinal = ("First", "Then", "Next", "After that", "Finally")
    lines = [f"{ordinal[min(i, 3) if i < len(swaps) - 1 else 4]}, {s}"
             for i, s in enumerate(swaps)]
    ask = f"At the end, which ball does {rng.choice(people)} have?"
    text = f"{intro}. {' '.join(lines)} {ask}"
    if options:
        lines_opt, n = _options(rng, [f"{c} ball" for c in colours], len(colours))
        return f"{text}\nOptions:\n{lines_opt}", n
    return text, len(colours)


def _graph(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    nodes = rng.sample(range(10, 99), 2 * _steps(d, 3, 16) + 2)
    half = len(nodes) // 2
    edges = [(a, b) for part in (nodes[:half], nodes[half:])
             for a, b in zip(part, part[1:], strict=False)]
    rng.shuffle(edges)
    sep = rng.choice(("-", " -> ", "--"))
    listed = ", ".join(f"{a}{sep}{b}" for a, b in edges)
    return (f"A graph has these edges: {listed}. Is node {nodes[0]} connected to node "
            f"{rng.choice((nodes[half - 1], nodes[-1]))}?"), 2


def _navigate(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    moves = [rng.choice((f"Take {rng.randint(1, 9)} steps.", "Turn left.", "Turn right.",
                         "Turn around.", f"Take {rng.randint(1, 9)} steps backward."))
             for _ in range(_steps(d, 3, 14))]
    return ("If you follow these instructions, do you return to the starting point? "
            + " ".join(moves)), 2


def _coin(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    people = [rng.choice(_FIRST) for _ in range(_steps(d, 2, 12))]
    acts = " ".join(f"{p} {'flips' if rng.random() < 0.5 else 'does not flip'} the coin."
                    for p in people)
    return f"A coin is heads up. {acts} Is the coin still heads up?", 2


# -- easy: one-liners --------------------------------------------------------------------------

def _easy_sum(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return rng.choice((f"What is {a} + {b}?", f"{a} plus {b} equals?",
                       f"Compute {a}+{b}.")), OPEN


def _easy_word(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    word = rng.choice(_EASY_WORDS)
    return rng.choice((f"Spell the word '{word}' backwards.",
                       f"What is the opposite of '{word}'?",
                       f"Give a word that rhymes with '{word}'.",
                       f"Translate '{word}' into Spanish.")), OPEN


def _easy_fact(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    animal, _ = rng.choice(_ANIMALS)
    country = rng.choice(_COUNTRIES)
    stem = rng.choice((f"How many legs does a {animal} have?",
                       f"What is the capital of {country}?",
                       "What color is the sky on a clear day?",
                       f"Is {rng.randint(2, 98)} an even number?"))
    if options and "capital" in stem:
        text, n = _options(rng, [name(rng) for _ in range(4)], 4)
        return f"{stem}\n{text}", n
    return stem, 2 if stem.startswith("Is ") else OPEN


# -- fact: needs search ------------------------------------------------------------------------

def _bridge(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    film, place = f"{name(rng)} {rng.choice(('Rising', 'Nights', 'of the North'))}", name(rng)
    return rng.choice((
        f"In what year was the director of the film {film} born?",
        f"Which city is the headquarters of the company that acquired {name(rng)} "
        f"{rng.choice(('Labs', 'Systems', 'Records'))}?",
        f"The {rng.choice(_PROFESSIONS)} who designed the {place} Library was born in which "
        "country?",
        f"Who founded the band whose debut album was {film}?")), OPEN


def _comparison(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    a = f"{rng.choice(_FIRST)} {name(rng)}"
    b = f"{rng.choice(_FIRST)} {name(rng)}"
    prof, nat = rng.choice(_PROFESSIONS), rng.choice(_NATIONALITIES)
    return rng.choice((f"Are {a} and {b} both {nat} {prof}s?",
                       f"Who was born first, {a} or {b}?",
                       f"Were {name(rng)} Park and {name(rng)} Tower opened in the same "
                       "decade?")), 2


def _lookup(rng: random.Random, d: float, options: bool) -> tuple[str, int]:
    town = name(rng, 3)
    year = rng.choice((2011, 2016, 2020, 2021))
    stem = rng.choice((f"What was the population of {town} in the {year} census?",
                       f"Who won the {name(rng)} Prize for {rng.choice(_FIELDS)} in {year}?",
                       f"When did the {name(rng)} Bridge in {town} open?",
                       f"What is the name of the current mayor of {town}?"))
    if options:
        text, n = _options(rng, [f"{rng.choice(_FIRST)} {name(rng)}" for _ in range(5)], 4)
        return f"{stem}\n{text}", n
    return stem, OPEN


TEMPLATES: dict[str, dict[str, Template]] = {
    "guess": {"knowledge": _knowledge, "estimation": _estimation, "plausible": _plausible,
              "judgement": _judgement, "commonsense": _commonsense},
    "chain": {"arithmetic": _arithmetic, "word_problem": _word_problem,
              "tracking": _tracking, "graph": _graph, "navigate": _navigate, "coin": _coin},
    "easy": {"sum": _easy_sum, "word": _easy_word, "fact": _easy_fact},
    "fact": {"bridge": _bridge, "comparison": _comparison, "lookup": _lookup},
}

PREFIXES = ("", "", "Question: ", "Q: ", "Please answer the following. ",
            "Here is a question for you. ")
INSTRUCTIONS = ("", "", "Answer briefly.", "Think step by step.",
                'End with "The answer is X."', "Explain your reasoning, then give the answer.",
                "Respond with just the answer.")
CHATTY = ("I'm studying for an exam and got stuck on this one, could you help?",
          "My friend and I disagree about this.", "Quick question from work:",
          "This came up in a quiz today.")
DISTRACTORS = ("Note: the cafeteria closes early on Fridays.",
               "Some context: this is part of a longer worksheet, but the other questions "
               "are not needed here.",
               "(Unrelated, but the weather here has been lovely all week.)",
               "Background: the following was copied from a forum post written in 2019 by "
               "someone who collects old maps and enjoys hiking in the mountains.",
               "For context, here is the full message I received this morning, including the "
               "parts that do not matter. Our team meets every Tuesday at ten in the small "
               "room on the third floor, and the coffee machine there has been broken since "
               "March. Last week we discussed the new schedule for the spring, the budget for "
               "the summer outing, which of the two printers to replace, and whether the "
               "quarterly report should include the survey results or wait for the next "
               "round. Several people asked about parking. None of that is needed for the "
               "question below, which came at the end of the message.")
SYSTEMS = ("You are a helpful assistant.", "You are a careful tutor. Be concise.",
           "You answer questions for a customer-support team.")


@dataclass(frozen=True)
class Phrasing:
    """How one kind of prompt is written in one world.

    ``templates``: names in ``TEMPLATES[kind]``; ``prefix`` and ``instruction`` wrap every
    question; the rates are the per-prompt chances of lettered options (where a template
    offers them), a distracting sentence, a system turn and a chatty opening line.
    """

    kind: str
    templates: tuple[str, ...]
    prefix: str
    instruction: str
    options_rate: float
    distractor_rate: float
    system_rate: float
    chatty_rate: float


def draw_phrasing(kind: str, rng: random.Random) -> Phrasing:
    """One world's phrasing of ``kind``: 1 to 3 of its templates and the style knobs, all at
    random. Raises ``KeyError`` for an unknown kind."""
    pool = sorted(TEMPLATES[kind])
    count = rng.randint(1, min(3, len(pool)))
    return Phrasing(kind=kind, templates=tuple(rng.sample(pool, count)),
                    prefix=rng.choice(PREFIXES), instruction=rng.choice(INSTRUCTIONS),
                    options_rate=rng.choice((0.0, 0.5, 1.0)),
                    distractor_rate=rng.choice((0.0, 0.0, 0.2, 0.6)),
                    system_rate=rng.choice((0.0, 0.5, 1.0)),
                    chatty_rate=rng.choice((0.0, 0.0, 0.3)))


def write_prompt(phrasing: Phrasing, difficulty: float, rng: random.Random
                 ) -> tuple[list[dict[str, Any]], int, str]:
    """One prompt of this phrasing at ``difficulty``: (OpenAI chat messages, the number of
    answer choices (chance is its inverse), the template's name)."""
    template = rng.choice(phrasing.templates)
    question, choices = TEMPLATES[phrasing.kind][template](
        rng, difficulty, rng.random() < phrasing.options_rate)
    parts = []
    if rng.random() < phrasing.chatty_rate:
        parts.append(rng.choice(CHATTY))
    if rng.random() < phrasing.distractor_rate:
        parts.append(rng.choice(DISTRACTORS))
    parts.append(phrasing.prefix + question)
    if phrasing.instruction:
        parts.append(phrasing.instruction)
    messages: list[dict[str, Any]] = []
    if rng.random() < phrasing.system_rate:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    # Parts on lines of their own, never blank lines: the simulator recognises a prompt by
    # its blank-line blocks once a harness appends an instruction.
    messages.append({"role": "user", "content": "\n".join(parts) if len(parts) > 2
                     else " ".join(parts)})
    return messages, choices, template
