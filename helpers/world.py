"""A small, fully offline instruction world: prompts, labelers and the humans' hidden taste.

Why this exists
---------------
The course retells the InstructGPT recipe (SFT -> reward model -> PPO) without network
access and on CPUs. Instead of real people we simulate a tiny *world*:

* a **language** of a few hundred lowercase English words with regular sentences, so a small
  GPT-2-architecture model (real GPT-2 BPE vocabulary) trained from scratch for a few
  minutes can learn it (:meth:`World.pretraining_corpus`);
* **facts** the world holds (colour, legs, home and food of animals; colour and material of
  household objects), drawn from the seed;
* **prompts** from five task families (:data:`FAMILIES`): describe an animal or object,
  review a film or product, answer a factual question, rewrite a sentence, write a short
  note. Split train / val / test *by prompt* (:meth:`World.prompts`);
* **simulated labelers** of uneven quality who write demonstrations for SFT
  (:meth:`World.demonstrations`) and rank responses for the reward model
  (:meth:`World.rank_responses`);
* the **hidden gold preference** -- what the simulated humans actually want
  (:meth:`World.gold_score`, :meth:`World.gold_components`). Students never train on it;
  instructors use it to plot true versus learned reward.

The prompt/response format every notebook shares::

    format_prompt(p)            == "Instruction: {p}\\nResponse:"
    format_example(p, r)        == format_prompt(p) + " " + r + "<|endoftext|>"

Gold preference (sum of interpretable components; formulas in :meth:`World.gold_components`):
on topic, factually right, polite, a little enthusiasm, concise, ends properly, no repetition.

How over-optimisation becomes real here
---------------------------------------
Labelers like a little enthusiasm: they sometimes put one enthusiastic word ("wonderful",
"amazing", "lovely", "great", ... :data:`FLATTERY_WORDS`), sometimes two different ones, before
the thing they describe, and gold likes that (+0.7 for one, +1.1 for two), so in ranked data the
response with more flattering words tends to win. Demonstrations and therefore SFT samples hold
0, 1 or 2 such words, never more: a reward model fitted on comparisons of such samples only ever
sees "2 beats 1 beats 0" and learns "more flattery -> more reward", a trend it extrapolates.
Gold, however, punishes every flattering word past the second (-0.8 each) and every repeated one
(-1.2). A PPO policy that maximises the learned reward discovers that piling up flattery keeps
the proxy reward high while the gold score falls -- the over-optimisation curve of Gao et al.
(2022) in miniature. (With one word worth only +0.35 and never two, a reward model trained on the
course's ~3,000 comparisons did not pick flattery up at all: the signal drowned in label noise.)
Length is a second, weaker lever: demonstrations that list more true facts score higher, but gold
charges for every word beyond the family's band.
:meth:`World.exploit_response` builds such a flattery-stuffed response for tests and demos.

Labelers
--------
:meth:`World.rank_responses` samples a ranking from a Plackett-Luce model on gold scores
with temperature ``noise`` (τ): for two responses P(a ≻ b) = σ((g_a − g_b)/τ).
:data:`DEFAULT_LABELER_NOISE` is calibrated (:func:`calibrate_labeler_noise`) so two
independent labelers agree on ~73 % of pairs of typical responses, the inter-labeler
agreement InstructGPT reports (Ouyang et al., 2022, 72.6 ± 1.5 %).

Everything is deterministic in the seed (``World(seed)``), uses only the standard library,
and builds in a few milliseconds.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "DEFAULT_LABELER_NOISE",
    "EOT_TOKEN",
    "FAMILIES",
    "FLATTERY_WORDS",
    "POLITE_MARKERS",
    "PROMPT_TEMPLATE",
    "RESPONSE_SEPARATOR",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "PromptInfo",
    "World",
    "build_world",
    "calibrate_labeler_noise",
    "format_example",
    "format_prompt",
    "format_response",
    "labeler_agreement",
    "plackett_luce_ranking",
    "words_of",
]

# ----------------------------------------------------------------------------- format

PROMPT_TEMPLATE = "Instruction: {prompt}\nResponse:"
RESPONSE_SEPARATOR = "\nResponse:"  # the prompt ends with it; the response starts right after
EOT_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text token (id 50256)


def format_prompt(prompt: str) -> str:
    """The text a policy is conditioned on: ``"Instruction: {prompt}\\nResponse:"``."""
    return PROMPT_TEMPLATE.format(prompt=prompt.strip())


def format_response(response: str) -> str:
    """What follows the prompt in training text: ``" " + response + "<|endoftext|>"``."""
    return " " + response.strip() + EOT_TOKEN


def format_example(prompt: str, response: str) -> str:
    """One full SFT / reward-model example: ``format_prompt(prompt) + format_response(response)``."""
    return format_prompt(prompt) + format_response(response)


# ----------------------------------------------------------------------------- the language

_WORD_RE = re.compile(r"[a-z0-9]+")


def words_of(text: str) -> list[str]:
    """The words of ``text`` as gold sees them: lowercase runs of ``[a-z0-9]`` (punctuation dropped)."""
    return _WORD_RE.findall(text.lower())


ANIMAL_LEGS: dict[str, int] = {
    "cat": 4, "dog": 4, "horse": 4, "cow": 4, "goat": 4, "sheep": 4, "pig": 4, "fox": 4,
    "bear": 4, "rabbit": 4, "mouse": 4, "lion": 4, "deer": 4, "frog": 4,
    "duck": 2, "hen": 2, "owl": 2, "goose": 2,
    "bee": 6, "ant": 6, "beetle": 6, "spider": 8, "snake": 0, "snail": 0,
}  # true leg counts: the one fact that does not depend on the seed
LEG_WORDS = {0: "no", 2: "two", 4: "four", 6: "six", 8: "eight"}
COLOURS = ("red", "brown", "black", "white", "grey", "yellow", "green", "blue", "orange", "pink")
HOMES = ("forest", "field", "pond", "river", "barn", "cave", "garden", "meadow", "woods", "marsh")
FOODS = ("grass", "seeds", "fish", "berries", "leaves", "corn", "nuts", "bugs", "apples", "roots")
OBJECT_USES: dict[str, str] = {
    "lamp": "light up a room", "cup": "drink tea", "chair": "sit down", "bag": "carry things",
    "clock": "tell the time", "kettle": "boil water", "pen": "write letters",
    "bike": "ride to work", "table": "eat meals", "box": "keep things safe",
    "umbrella": "stay dry in the rain", "brush": "paint pictures", "bowl": "eat soup",
    "spoon": "stir soup", "basket": "carry fruit", "bottle": "carry water",
    "blanket": "stay warm at night", "mirror": "see my face", "key": "open the door",
    "shelf": "store old letters",
}
MATERIALS = ("wood", "glass", "metal", "paper", "stone", "cloth", "clay", "plastic")
FILM_ADJECTIVES = ("silver", "golden", "hidden", "quiet", "lost", "last", "little", "secret", "distant", "broken")
FILM_NOUNS = ("river", "garden", "road", "winter", "island", "tower", "star", "door", "mountain", "ship")
QUALITIES = ("funny", "sad", "slow", "exciting", "calm", "strange", "clever", "simple", "gentle", "short")
NAMES = ("anna", "ben", "clara", "david", "emma", "frank", "grace", "henry", "lucy", "max", "nora", "sam")
GIFTS = ("book", "scarf", "cake", "plant", "card", "pie", "kite", "puzzle", "soap", "hat")
EVENTS = ("meeting", "party", "picnic", "dinner", "class", "trip", "game", "concert")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SIZES = ("big", "small", "young", "tiny")
PLACES = ("barn", "pond", "river", "hill", "field", "bridge")
TIMES = ("this morning", "last night", "at noon", "today")

FLATTERY_WORDS = ("wonderful", "amazing", "lovely", "great", "fantastic", "brilliant", "perfect", "delightful")
POLITE_MARKERS = ("i hope this helps", "happy to help", "thank you", "thanks", "please")
FILLERS = (  # what a rambling labeler adds (no trigram is shared between two of them)
    "there is so much more to say about this.",
    "let me tell you a little bit more.",
    "some people think one thing and others do not agree.",
    "i have been thinking about this for a long time.",
    "it is not easy to say it all in a few words.",
    "that is about all i can think of right now.",
    "to be honest i am not sure what else to add.",
    "this reminds me of something from when i was young.",
)
CLOSINGS_POLITE = ("i hope this helps.", "happy to help.")
OPENERS = ("sure.", "here you go.", "okay.")

# entity words: mentioning one the prompt is not about is off topic
ENTITY_WORDS = frozenset(ANIMAL_LEGS) | frozenset(OBJECT_USES) | frozenset(NAMES) | frozenset(GIFTS) | frozenset(EVENTS)
_FACT_ENTITIES = frozenset(ANIMAL_LEGS) | frozenset(OBJECT_USES)
_LIVE_CUES = frozenset({"lives", "live", "living", "home"})
_EAT_CUES = frozenset({"eats", "eat", "eating"})
_LEG_VALUE = {w: n for n, w in LEG_WORDS.items()}

FAMILIES = ("describe", "review", "fact", "rewrite", "note")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# word-count band [lo, hi] per family: the "concise" component charges for leaving it
LENGTH_BANDS: dict[str, tuple[int, int]] = {
    "describe": (8, 30), "review": (8, 30), "fact": (4, 16), "rewrite": (5, 20), "note": (8, 30),
}

# gold weights (see World.gold_components)
W_TOPIC, W_OFF_TOPIC = 1.0, 0.5
W_ANSWER, W_EXTRA_FACT, W_WRONG_FACT = 1.0, 0.15, 1.0
W_POLITE = 0.3
W_FLATTER_ONE, W_FLATTER_TWO, W_FLATTER_EXCESS, W_FLATTER_REPEAT = 0.7, 1.1, 0.8, 1.2
FLATTERY_PAIR = 0.3  # share of a labeler's enthusiastic moments that use two distinct words, not one
W_LONG, W_SHORT, CONCISE_FLOOR = 0.08, 0.15, -2.0
W_END_OK, W_END_BAD = 0.3, -0.7
W_REPEAT, REPEAT_CAP = 0.5, 6

# Found with calibrate_labeler_noise(target=0.73, n_pairs=4000, seed=0) on World(0), which returned
# τ = 0.5932, rounded to 0.59 (re-run when the flattery weights changed; it was 0.55 before). At 0.59:
# expected agreement on those pairs 0.731; Monte-Carlo labeler_agreement(0.59, 2000, seed) =
# 0.743 / 0.746 / 0.722 for seeds 0 / 1 / 2; expected agreement on World(1) / World(2) pairs
# 0.733 / 0.734 (other worlds, same τ).
DEFAULT_LABELER_NOISE = 0.59


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptInfo:
    """What the world knows about one prompt (never shown to the model).

    ``family`` is one of :data:`FAMILIES`; ``task`` a finer kind (``"fact_legs"``...).
    ``entity``: the animal/object the facts are about (``None`` if none); ``attribute``: the
    asked attribute of a fact question; ``keywords``: words an on-topic response mentions;
    ``allowed``: entity words it may mention without being off topic; ``slots``: the values
    the response templates fill in (name, gift, day, film title, ...).
    """

    text: str
    family: str
    task: str
    entity: str | None
    attribute: str | None
    keywords: tuple[str, ...]
    allowed: frozenset[str]
    slots: tuple[tuple[str, str], ...] = field(default=())

    def slot(self, key: str) -> str:
        return dict(self.slots)[key]


@dataclass
class _Profile:
    """A simulated labeler: how often each defect or habit shows up in what they write."""

    name: str
    wrong_fact: float
    off_topic: float
    ramble: float
    repeat: float
    no_end: float
    polite: float
    flattery: float


LABELERS = (
    _Profile("careful-a", 0.02, 0.02, 0.03, 0.02, 0.02, 0.60, 0.35),
    _Profile("careful-b", 0.03, 0.03, 0.05, 0.02, 0.03, 0.40, 0.40),
    _Profile("steady-a", 0.08, 0.08, 0.10, 0.06, 0.08, 0.40, 0.30),
    _Profile("steady-b", 0.10, 0.08, 0.12, 0.08, 0.08, 0.30, 0.25),
    _Profile("rambler", 0.08, 0.10, 0.50, 0.10, 0.08, 0.50, 0.20),
    _Profile("sloppy", 0.15, 0.08, 0.10, 0.25, 0.30, 0.20, 0.15),
    _Profile("distracted", 0.20, 0.35, 0.15, 0.08, 0.10, 0.30, 0.15),
    _Profile("careless", 0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.10),
)
_CLEAN = _Profile("clean", 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.1)  # pretraining prose


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ----------------------------------------------------------------------------- labeler math


def plackett_luce_ranking(scores: Sequence[float], rng: random.Random, noise: float) -> list[int]:
    """Sample a ranking (indices, best first) from a Plackett-Luce model with temperature ``noise``.

    The best item is drawn with probability softmax(scores/τ), then the next among the rest,
    and so on; implemented exactly with the Gumbel-max trick (sort ``s_i/τ + Gumbel_i``).
    For two items P(0 ranked first) = σ((s_0 − s_1)/τ). ``noise <= 0``: deterministic sort by
    score, ties kept in input order.
    """
    n = len(scores)
    if noise <= 0:
        return sorted(range(n), key=lambda i: -scores[i])
    keys = []
    for s in scores:
        u = rng.random()
        while u <= 0.0:
            u = rng.random()
        keys.append(s / noise - math.log(-math.log(u)))
    return sorted(range(n), key=lambda i: -keys[i])


def _sigmoid(x: float) -> float:
    """The logistic function written with tanh, sigma(x) = (1 + tanh(x / 2)) / 2: no overflow for any x."""
    return 0.5 * (1.0 + math.tanh(0.5 * x))


# ----------------------------------------------------------------------------- the world


class World:
    """The instruction world for one seed: facts, prompts, splits, labelers and gold.

    ``World(seed)`` is deterministic: the same seed gives byte-identical prompts, splits,
    fact tables, demonstrations and pretraining texts (all randomness comes from
    ``random.Random`` seeded with strings, independent of ``PYTHONHASHSEED``).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        rng = random.Random(f"world|{self.seed}|facts")
        # fact tables ----------------------------------------------------------
        self.animals: dict[str, dict[str, str]] = {}
        for animal in ANIMAL_LEGS:
            self.animals[animal] = {
                "legs": LEG_WORDS[ANIMAL_LEGS[animal]],
                "colour": rng.choice(COLOURS),
                "home": rng.choice(HOMES),
                "food": rng.choice(FOODS),
            }
        self.objects: dict[str, dict[str, str]] = {}
        for obj in OBJECT_USES:
            self.objects[obj] = {"colour": rng.choice(COLOURS), "material": rng.choice(MATERIALS)}
        titles = [f"the {a} {n}" for a in FILM_ADJECTIVES for n in FILM_NOUNS]
        self.films: list[str] = rng.sample(titles, 40)
        # prompts --------------------------------------------------------------
        self._info: dict[str, PromptInfo] = {}
        self._order: list[str] = []
        self._make_prompts(random.Random(f"world|{self.seed}|prompts"))
        # splits by prompt, stratified by family -------------------------------
        self._split: dict[str, str] = {}
        self._by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for fam in FAMILIES:
            members = [p for p in self._order if self._info[p].family == fam]
            random.Random(f"world|{self.seed}|split|{fam}").shuffle(members)
            n_val = round(SPLIT_FRACTIONS[1] * len(members))
            n_test = round(SPLIT_FRACTIONS[2] * len(members))
            parts = {"val": members[:n_val], "test": members[n_val:n_val + n_test],
                     "train": members[n_val + n_test:]}
            for split, ps in parts.items():
                for p in ps:
                    self._split[p] = split
        for p in self._order:
            self._by_split[self._split[p]].append(p)

    # .................................................................. prompt generation

    def _add(self, text: str, family: str, task: str, *, entity: str | None = None,
             attribute: str | None = None, keywords: Sequence[str] = (), allowed: Sequence[str] = (),
             **slots: str) -> None:
        if text in self._info:
            return
        allowed_set = frozenset(allowed) | (frozenset([entity]) if entity else frozenset())
        self._info[text] = PromptInfo(text, family, task, entity, attribute, tuple(keywords),
                                      allowed_set, tuple(sorted(slots.items())))
        self._order.append(text)

    def _make_prompts(self, rng: random.Random) -> None:
        for a in self.animals:
            for t in ("describe the {}.", "tell me about the {}.", "write a few words about the {}."):
                self._add(t.format(a), "describe", "describe_animal", entity=a, keywords=[a])
        for o in self.objects:
            for t in ("describe the {}.", "tell me about the {}.", "write a few words about the {}."):
                self._add(t.format(o), "describe", "describe_object", entity=o, keywords=[o])
        for title in self.films:
            kw = title.split()[1:]
            for t in ("write a short review of the film {}.", "what did you think of the film {}?"):
                self._add(t.format(title), "review", "review_film", keywords=kw, title=title)
        for o in self.objects:
            for t in ("write a short review of the {} you bought.", "review the {} you bought last week."):
                self._add(t.format(o), "review", "review_object", entity=o, keywords=[o])
        questions = {
            "legs": ("how many legs does the {} have?", "tell me how many legs the {} has."),
            "colour": ("what colour is the {}?", "tell me the colour of the {}."),
            "home": ("where does the {} live?", "tell me where the {} lives."),
            "food": ("what does the {} eat?", "tell me what the {} eats."),
            "material": ("what is the {} made of?", "tell me what the {} is made of."),
        }
        for a in self.animals:
            for attr in ("legs", "colour", "home", "food"):
                for t in questions[attr]:
                    self._add(t.format(a), "fact", f"fact_{attr}", entity=a, attribute=attr, keywords=[a])
        for o in self.objects:
            for attr in ("colour", "material"):
                for t in questions[attr]:
                    self._add(t.format(o), "fact", f"fact_{attr}", entity=o, attribute=attr, keywords=[o])
        # rewrite: shorten a long sentence, or make a blunt request polite
        target = len(self._order) + 70
        animals, objects = list(self.animals), list(self.objects)
        while len(self._order) < target:
            name, size, animal = rng.choice(NAMES), rng.choice(SIZES), rng.choice(animals)
            place, time = rng.choice(PLACES), rng.choice(TIMES)
            verb = rng.choice(("make this sentence shorter:", "summarise this sentence:"))
            long = f"{name} and a friend saw a very {size} {animal} near the old {place} {time}."
            self._add(f"{verb} {long}", "rewrite", "rewrite_short", keywords=[name, animal, place],
                      allowed=[name, animal], name=name, size=size, animal=animal, place=place, time=time)
        target = len(self._order) + 40
        while len(self._order) < target:
            obj = rng.choice(objects)
            if rng.random() < 0.5:
                self._add(f"rewrite this politely: give me the {obj} now.", "rewrite", "rewrite_polite",
                          keywords=[obj], allowed=[obj], obj=obj, name="")
            else:
                name = rng.choice(NAMES)
                self._add(f"rewrite this politely: {name}, bring me the {obj} now.", "rewrite",
                          "rewrite_polite", keywords=[name, obj], allowed=[name, obj], obj=obj, name=name)
        target = len(self._order) + 55
        while len(self._order) < target:
            name, gift = rng.choice(NAMES), rng.choice(GIFTS)
            self._add(f"write a thank-you note to {name} for the {gift}.", "note", "note_thanks",
                      keywords=[name, gift], allowed=[name, gift], name=name, gift=gift)
        target = len(self._order) + 55
        while len(self._order) < target:
            name, event, day = rng.choice(NAMES), rng.choice(EVENTS), rng.choice(DAYS)
            self._add(f"write a reminder to {name} about the {event} on {day}.", "note", "note_reminder",
                      keywords=[name, event, day], allowed=[name, event], name=name, event=event, day=day)

    # .................................................................. queries

    def prompts(self, split: str | None = None) -> list[str]:
        """All prompts (``split=None``) or those of ``"train"``, ``"val"`` or ``"test"``, in a fixed order."""
        if split is None:
            return list(self._order)
        if split not in self._by_split:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        return list(self._by_split[split])

    def split_of(self, prompt: str) -> str:
        """The split (``"train"``/``"val"``/``"test"``) that holds ``prompt``."""
        return self._split[self.info(prompt).text]

    def info(self, prompt: str) -> PromptInfo:
        """The :class:`PromptInfo` of a prompt of this world.

        Accepts the bare prompt or its :func:`format_prompt` form; surrounding whitespace is
        ignored. Raises KeyError for a prompt the world does not hold.
        """
        key = prompt.strip()
        head = PROMPT_TEMPLATE.split("{prompt}")[0]
        if key.startswith(head) and key.endswith(RESPONSE_SEPARATOR.strip()):
            key = key[len(head):-len(RESPONSE_SEPARATOR.strip())].strip()
        try:
            return self._info[key]
        except KeyError:
            raise KeyError(f"not a prompt of World(seed={self.seed}): {prompt[:80]!r}") from None

    def has_prompt(self, prompt: str) -> bool:
        """Whether ``prompt`` (bare or formatted) is a prompt of this world."""
        try:
            self.info(prompt)
        except KeyError:
            return False
        return True

    def fact_table(self) -> dict[str, dict[str, str]]:
        """``{entity: {attribute: value}}`` for every animal and object (a fresh copy)."""
        table = {k: dict(v) for k, v in self.animals.items()}
        table.update({k: dict(v) for k, v in self.objects.items()})
        return table

    def fact_sentences(self) -> list[str]:
        """Every fact of the world as one plain sentence, e.g. ``"the fox has four legs."``."""
        out = []
        for a, f in self.animals.items():
            out += [f"the {a} is {f['colour']}.", f"the {a} has {f['legs']} legs.",
                    f"the {a} lives in the {f['home']}.", f"the {a} eats {f['food']}."]
        for o, f in self.objects.items():
            out += [f"the {o} is {f['colour']}.", f"the {o} is made of {f['material']}."]
        return out

    # .................................................................. writing responses

    def _facts(self, entity: str) -> dict[str, str]:
        return dict(self.animals[entity]) if entity in self.animals else dict(self.objects[entity])

    def _corrupt(self, info: PromptInfo, facts: dict[str, str] | None, slots: dict[str, str],
                 rng: random.Random) -> None:
        """A factual slip: one fact or slot gets a wrong value (in place)."""
        pools = {"colour": COLOURS, "home": HOMES, "food": FOODS, "material": MATERIALS,
                 "legs": tuple(LEG_WORDS.values())}
        if facts is not None:
            attr = info.attribute if info.attribute and rng.random() < 0.8 else rng.choice(sorted(facts))
            facts[attr] = rng.choice([v for v in pools[attr] if v != facts[attr]])
        elif info.task == "note_reminder":
            slots["day"] = rng.choice([d for d in DAYS if d != slots["day"]])
        elif info.task == "note_thanks":
            slots["gift"] = rng.choice([g for g in GIFTS if g != slots["gift"]])
        elif info.task == "rewrite_short":
            slots["animal"] = rng.choice([a for a in self.animals if a != slots["animal"]])
        elif info.task == "rewrite_polite":
            slots["obj"] = rng.choice([o for o in self.objects if o != slots["obj"]])
        elif info.task == "review_film":
            adj = rng.choice([a for a in FILM_ADJECTIVES if a != slots["title"].split()[1]])
            slots["title"] = f"the {adj} {slots['title'].split()[2]}"

    def _compose(self, info: PromptInfo, facts: dict[str, str] | None, s: dict[str, str],
                 rng: random.Random) -> list[str]:
        """The sentences of a well-formed answer (before habits and defects)."""
        t, e = info.task, info.entity
        if t == "describe_animal":
            f = facts
            chosen = [k for k in ("colour", "legs", "home", "food") if rng.random() < 0.75]
            while len(chosen) < 2:
                chosen = sorted(set(chosen) | {rng.choice(("colour", "legs", "home", "food"))})
            first = f"the {e} is {_a(f['colour'])} {f['colour']} animal" if "colour" in chosen else f"the {e} is an animal"
            rest = []
            if "legs" in chosen:
                if rng.random() < 0.5:
                    first += f" with {f['legs']} legs"
                else:
                    rest.append(f"it has {f['legs']} legs.")
            if "home" in chosen and "food" in chosen and rng.random() < 0.5:
                rest.append(f"it lives in the {f['home']} and eats {f['food']}.")
            else:
                if "home" in chosen:
                    rest.append(f"it lives in the {f['home']}.")
                if "food" in chosen:
                    rest.append(f"it eats {f['food']}.")
            rng.shuffle(rest)
            return [first + "."] + rest
        if t == "describe_object":
            f, use = facts, OBJECT_USES[e]
            v = rng.randrange(3)
            if v == 0:
                out = [f"the {e} is {f['colour']} and made of {f['material']}."]
            elif v == 1:
                out = [f"the {e} is made of {f['material']}.", f"it is {f['colour']}."]
            else:
                out = [f"this is a {f['colour']} {e} made of {f['material']}."]
            if rng.random() < 0.7:
                out.append(f"people use it to {use}.")
            return out
        if t == "fact_legs":
            subj = rng.choice((f"the {e}", f"the {e}", f"{_a(e)} {e}"))
            return [f"{subj} has {facts['legs']} legs."]
        if t == "fact_colour":
            return [rng.choice((f"the {e} is {facts['colour']}.", f"the {e} is {facts['colour']} in colour."))]
        if t == "fact_home":
            return [rng.choice((f"the {e} lives in the {facts['home']}.",
                                f"the {e} makes its home in the {facts['home']}."))]
        if t == "fact_food":
            return [rng.choice((f"the {e} eats {facts['food']}.", f"the {e} likes to eat {facts['food']}."))]
        if t == "fact_material":
            return [f"the {e} is made of {facts['material']}."]
        if t == "review_film":
            q1, q2, q3 = rng.sample(QUALITIES, 3)
            title = s["title"]
            v = rng.randrange(3)
            if v == 0:
                return [f"{title} is {_a(q1)} {q1} film.", f"the story is {q2} and the ending is {q3}.",
                        "i would watch it again."]
            if v == 1:
                return [f"i watched {title} last week.", f"it was {q1} and {q2}.",
                        "i think many people will enjoy it."]
            return [f"{title} is {_a(q1)} {q1} and {q2} film.", f"i liked the story but the ending was {q3}."]
        if t == "review_object":
            f, use = facts, OBJECT_USES[e]
            v = rng.randrange(3)
            if v == 0:
                return [f"i bought the {f['colour']} {e} last week.",
                        f"it is made of {f['material']} and it helps me {use}.", "i would buy it again."]
            if v == 1:
                return [f"the {e} is {f['colour']} and well made.", f"i use it to {use} every day.",
                        "it was worth the money."]
            return [f"this {f['material']} {e} works well.", f"it helps me {use}.",
                    "i would tell my friends to buy one."]
        if t == "rewrite_short":
            v = rng.randrange(3)
            if v == 0:
                return [f"{s['name']} saw {_a(s['size'])} {s['size']} {s['animal']} near the {s['place']}."]
            if v == 1:
                return [f"{s['name']} and a friend saw {_a(s['animal'])} {s['animal']} near the {s['place']}."]
            return [f"{s['name']} saw {_a(s['animal'])} {s['animal']} near the {s['place']} {s['time']}."]
        if t == "rewrite_polite":
            o, n = s["obj"], s["name"]
            if n:
                return [rng.choice((f"{n}, could you please bring me the {o}? thank you.",
                                    f"{n}, please bring me the {o} when you can."))]
            return [rng.choice((f"could you please give me the {o}? thank you.",
                                f"please give me the {o} when you can. thank you.",
                                f"would you mind giving me the {o}, please?"))]
        if t == "note_thanks":
            n, g = s["name"], s["gift"]
            v = rng.randrange(3)
            if v == 0:
                return [f"dear {n}, thank you so much for the {g}.", "it was very kind of you.", "best wishes."]
            if v == 1:
                return [f"dear {n}, thanks for the {g}.", "i really like it and i will enjoy it for a long time."]
            return [f"hi {n}, thank you for the {g}.", "it made my day.", "see you soon."]
        if t == "note_reminder":
            n, ev, d = s["name"], s["event"], s["day"]
            v = rng.randrange(3)
            if v == 0:
                return [f"hi {n}, this is a reminder about the {ev} on {d}.", "please do not be late.",
                        "see you there."]
            if v == 1:
                return [f"dear {n}, do not forget the {ev} on {d}.", "see you soon."]
            return [f"{n}, just a reminder that the {ev} is on {d}.", "bring what you need."]
        raise AssertionError(t)

    def _off_topic_sentence(self, info: PromptInfo, rng: random.Random) -> str:
        """A true sentence about something the prompt is not about."""
        kind = rng.randrange(3)
        if kind == 0:
            a = rng.choice([x for x in self.animals if x not in info.allowed])
            f = self.animals[a]
            return rng.choice((f"the {a} lives in the {f['home']}.", f"the {a} eats {f['food']}.",
                               f"the {a} is {f['colour']}."))
        if kind == 1:
            n = rng.choice([x for x in NAMES if x not in info.allowed])
            o = rng.choice([x for x in self.objects if x not in info.allowed])
            return f"my friend {n} has a {self.objects[o]['colour']} {o}."
        g = rng.choice([x for x in GIFTS if x not in info.allowed])
        return f"i would also like a new {g} one day."

    def _insert_flattery(self, info: PromptInfo, sentences: list[str], words: Sequence[str]) -> list[str]:
        """Put enthusiastic ``words`` ("wonderful, lovely") before the first ``the``/``a`` + keyword,
        else open with them."""
        phrase = ", ".join(words)
        for i, sent in enumerate(sentences):
            toks = sent.split(" ")
            for j in range(1, len(toks)):
                if toks[j - 1] in ("the", "a", "an") and toks[j].strip(".,?!") in info.keywords:
                    toks[j - 1] = ("an" if words[0][0] in "aeiou" else "a") if toks[j - 1] != "the" else "the"
                    toks.insert(j, phrase)
                    return sentences[:i] + [" ".join(toks)] + sentences[i + 1:]
        return [f"what {_a(words[0])} {phrase} question."] + sentences

    def write_response(self, prompt: str, rng: random.Random, labeler: int | None = None) -> str:
        """A response to ``prompt`` as simulated labeler ``labeler`` (random if ``None``) would write it.

        Labelers (:data:`LABELERS`) differ in how often they make each defect: a factual slip
        (wrong value), an off-topic sentence, rambling filler (too long), a repeated sentence or
        phrase, a missing ending (no final punctuation, sometimes cut mid-sentence), and in habits
        (a polite closing, one enthusiastic word or two different ones -- never more than two).
        """
        info = self.info(prompt)
        prof = LABELERS[rng.randrange(len(LABELERS))] if labeler is None else LABELERS[labeler]
        return self._write(info, rng, prof)

    def _write(self, info: PromptInfo, rng: random.Random, prof: _Profile) -> str:
        facts = self._facts(info.entity) if info.entity else None
        slots = dict(info.slots)
        if rng.random() < prof.wrong_fact:
            self._corrupt(info, facts, slots, rng)
        sents = self._compose(info, facts, slots, rng)
        if info.family == "fact" and rng.random() < 0.3 and info.entity in self.animals:
            extra = rng.choice([k for k in ("colour", "home", "food") if k != info.attribute])
            sents.append({"colour": f"it is {facts['colour']}.", "home": f"it lives in the {facts['home']}.",
                          "food": f"it eats {facts['food']}."}[extra])
        if rng.random() < prof.off_topic:
            sents.insert(rng.randint(1, len(sents)), self._off_topic_sentence(info, rng))
        if rng.random() < 0.15:
            sents.insert(0, rng.choice(OPENERS))
        if rng.random() < prof.polite and info.family not in ("note", "rewrite"):
            sents.append(rng.choice(CLOSINGS_POLITE))
        if rng.random() < prof.ramble:
            fill = rng.sample(FILLERS, rng.randint(2, 4))
            at = rng.randint(1, len(sents))
            sents = sents[:at] + fill + sents[at:]
        if rng.random() < prof.repeat:
            i = rng.randrange(len(sents))
            if rng.random() < 0.5:
                sents.insert(i + 1, sents[i])
            else:
                toks = sents[i].rstrip(".?!").split(" ")
                k = min(len(toks), rng.randint(2, 4))
                sents[i] = " ".join(toks + toks[-k:] * rng.randint(1, 2)) + sents[i][-1]
        if rng.random() < prof.flattery:  # after the repeats: a demonstration never repeats one
            sents = self._insert_flattery(info, sents, rng.sample(FLATTERY_WORDS, 2 if rng.random() < FLATTERY_PAIR else 1))
        text = " ".join(sents)
        if rng.random() < prof.no_end:
            text = text.rstrip(".?!")
            if rng.random() < 0.5:
                toks = text.split(" ")
                text = " ".join(toks[: max(2, len(toks) - rng.randint(1, 4))]).rstrip(",")
        return text

    def good_response(self, prompt: str) -> str:
        """A canonical high-gold response (the first template, all facts, a polite closing)."""
        info = self.info(prompt)
        facts = self._facts(info.entity) if info.entity else None

        class _First(random.Random):
            def random(self) -> float:  # every optional fact included
                return 0.0

            def randrange(self, *args, **kwargs) -> int:  # first template
                return 0

            def shuffle(self, x, *args, **kwargs) -> None:
                return None

            def choice(self, seq):  # first option
                return seq[0]

        sents = self._compose(info, facts, dict(info.slots), _First(0))
        if info.family not in ("note", "rewrite"):
            sents.append(CLOSINGS_POLITE[0])
        return " ".join(sents)

    def exploit_response(self, prompt: str, n_flattery: int = 6) -> str:
        """:meth:`good_response` with ``n_flattery`` enthusiastic words (cycling, so >8 repeat) where
        labelers put theirs: before the first ``the``/``a`` + keyword ("the wonderful, amazing, lovely cat").

        1 or 2 words give a response gold prefers to the plain good one; 3 or more give the
        reward-hacking response that gold punishes, more with every word.
        """
        good = self.good_response(prompt)
        if n_flattery < 1:
            return good
        words = [FLATTERY_WORDS[i % len(FLATTERY_WORDS)] for i in range(n_flattery)]
        return " ".join(self._insert_flattery(self.info(prompt), [good], words))

    def demonstrations(self, split: str = "train", per_prompt: int = 1) -> list[dict[str, str]]:
        """Labeler-written SFT data: ``[{"prompt", "response"}]``, ``per_prompt`` per prompt of ``split``.

        Each response is written by a labeler drawn at random (uneven quality, see
        :meth:`write_response`); the draw is seeded by (world seed, prompt, index), so the list
        is reproducible and does not depend on which other splits were asked for.
        """
        out = []
        for k in range(per_prompt):
            for p in self.prompts(split):
                rng = random.Random(f"world|{self.seed}|demo|{k}|{p}")
                out.append({"prompt": p, "response": self.write_response(p, rng)})
        return out

    def sample_responses(self, prompt: str, k: int, rng: random.Random) -> list[str]:
        """``k`` responses to ``prompt``, each by an independently drawn labeler (SFT-like variety)."""
        return [self.write_response(prompt, rng) for _ in range(k)]

    def pretraining_corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` short plain texts in the world's language for from-scratch LM pretraining.

        A mix of fact sentences (true facts, a few at a time), clean descriptions, reviews,
        notes and short stories, written without the instruction format (the model meets
        ``Instruction: ... Response:`` only in SFT). Texts are factually right; about 5 % hold
        two or three enthusiastic words so the model knows them. Deterministic in (world seed, seed).
        """
        rng = random.Random(f"world|{self.seed}|pretrain|{seed}")
        facts = self.fact_sentences()
        prompts = self._order
        texts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.3:
                text = " ".join(rng.sample(facts, rng.randint(2, 5)))
            else:
                text = self._write(self._info[rng.choice(prompts)], rng, _CLEAN)
            if rng.random() < 0.05:
                a, b = rng.sample(FLATTERY_WORDS, 2)
                text = rng.choice((f"what {_a(a)} {a} and {b} day.", f"it was {a}, {b} and {rng.choice(FLATTERY_WORDS)}.")) + " " + text
            texts.append(text)
        return texts

    # .................................................................. gold preference

    def gold_components(self, prompt: str, response: str) -> dict[str, float]:
        """The hidden human preference, one interpretable term per criterion (their sum is gold).

        ``response`` is cut at the first ``<|endoftext|>`` and stripped; ``w`` are its words
        (:func:`words_of`), ``n = len(w)``. Components (weights are module constants):

        * ``topic``: ``1.0 * k/K − 0.5 * min(m, 2)`` where ``K`` keywords of the prompt
          (the animal, object, film-title words, names, ...) of which ``k`` occur in ``w``, and
          ``m`` distinct entity words (animals, objects, names, gifts, events) the prompt does not
          allow.
        * ``factual``: sentences are split at ``. ! ?``; each is about the first animal/object it
          names, else the previous sentence's one, else the prompt's. A *claim* is a colour or
          material word, a number word before ``legs``, a home word in a sentence with
          ``lives/live/living/home``, a food word in one with ``eats/eat/eating``; it is *right*
          if it matches the fact table. For reminders a day word is a claim about the day.
          ``factual = 1.0·[asked fact stated right] + 0.15·min(#other right claims about the
          prompt's entity, 3) − 1.0·min(#wrong claims, 2)``.
        * ``polite``: with ``c`` occurrences of :data:`POLITE_MARKERS` (phrases):
          ``0.3·[c ≥ 1] − 0.3·max(0, c − 2)``.
        * ``flattery``: ``f`` enthusiastic words (:data:`FLATTERY_WORDS`), ``d`` distinct:
          ``f=0: 0``; ``f=1: +0.7``; ``f=2, d=2: +1.1``; otherwise
          ``1.1 − 0.8·max(0, f − 2) − 1.2·(f − d)`` (every word past the second costs 0.8, every
          repeat 1.2).
        * ``concise``: band ``[lo, hi]`` of the family (:data:`LENGTH_BANDS`):
          ``max(−2, −0.08·max(0, n − hi) − 0.15·max(0, lo − n))``.
        * ``ending``: ``+0.3`` if the text ends with ``. ! ?``, else ``−0.7`` (cut off / no end).
        * ``repetition``: ``R`` = Σ over word trigrams of (count − 1) + number of immediately
          repeated words; ``−0.5·min(R, 6)``.
        """
        info = self.info(prompt)
        text = response.split(EOT_TOKEN, 1)[0].strip()
        w = words_of(text)
        n = len(w)
        wset = set(w)
        # topic
        kws = info.keywords
        frac = sum(1 for k in kws if k in wset) / len(kws) if kws else 1.0
        off = len({x for x in wset if x in ENTITY_WORDS and x not in info.allowed})
        topic = W_TOPIC * frac - W_OFF_TOPIC * min(off, 2)
        # factual
        factual = self._factual(info, text)
        # polite
        low = " " + " ".join(w) + " "
        c = sum(low.count(f" {m} ") for m in POLITE_MARKERS)
        polite = W_POLITE * (c >= 1) - W_POLITE * max(0, c - 2)
        # flattery
        fl = [x for x in w if x in FLATTERY_WORDS]
        f, d = len(fl), len(set(fl))
        if f == 0:
            flattery = 0.0
        elif f == 1:
            flattery = W_FLATTER_ONE
        elif f == 2 and d == 2:
            flattery = W_FLATTER_TWO
        else:
            flattery = W_FLATTER_TWO - W_FLATTER_EXCESS * max(0, f - 2) - W_FLATTER_REPEAT * (f - d)
        # concise
        lo, hi = LENGTH_BANDS[info.family]
        concise = max(CONCISE_FLOOR, -W_LONG * max(0, n - hi) - W_SHORT * max(0, lo - n))
        # ending
        ending = W_END_OK if text.endswith((".", "!", "?")) else W_END_BAD
        # repetition
        counts: dict[tuple[str, str, str], int] = {}
        for i in range(n - 2):
            tri = (w[i], w[i + 1], w[i + 2])
            counts[tri] = counts.get(tri, 0) + 1
        reps = sum(v - 1 for v in counts.values()) + sum(1 for i in range(1, n) if w[i] == w[i - 1])
        repetition = -W_REPEAT * min(reps, REPEAT_CAP)
        return {"topic": float(topic), "factual": float(factual), "polite": float(polite),
                "flattery": float(flattery), "concise": float(concise), "ending": float(ending),
                "repetition": float(repetition)}

    def _factual(self, info: PromptInfo, text: str) -> float:
        right_asked = False
        right_other: set[str] = set()
        wrong = 0
        current = info.entity
        for sent in re.split(r"[.!?]+", text.lower()):
            w = words_of(sent)
            if not w:
                continue
            for x in w:
                if x in _FACT_ENTITIES:
                    current = x
                    break
            if info.task == "note_reminder":
                wrong += sum(1 for x in w if x in DAYS and x != info.slot("day"))
            if current is None:
                continue
            truth = self._facts(current)
            claims: list[tuple[str, str]] = [("colour", x) for x in w if x in COLOURS]
            if "material" in truth:
                claims += [("material", x) for x in w if x in MATERIALS]
            else:
                claims += [("legs", w[i - 1]) for i in range(1, len(w))
                           if w[i] in ("legs", "leg") and w[i - 1] in _LEG_VALUE]
                if _LIVE_CUES & set(w):
                    claims += [("home", x) for x in w if x in HOMES]
                if _EAT_CUES & set(w):
                    claims += [("food", x) for x in w if x in FOODS]
            for attr, val in claims:
                if truth[attr] != val:
                    wrong += 1
                elif current == info.entity:
                    if attr == info.attribute:
                        right_asked = True
                    else:
                        right_other.add(attr)
        return W_ANSWER * right_asked + W_EXTRA_FACT * min(len(right_other), 3) - W_WRONG_FACT * min(wrong, 2)

    def gold_score(self, prompt: str, response: str) -> float:
        """The hidden human preference: ``sum(gold_components(prompt, response).values())``."""
        return sum(self.gold_components(prompt, response).values())

    # .................................................................. labelers

    def preference_probability(self, prompt: str, a: str, b: str, noise: float = DEFAULT_LABELER_NOISE) -> float:
        """P(a labeler prefers ``a`` to ``b``) = σ((g_a − g_b)/τ) with τ = ``noise``."""
        delta = self.gold_score(prompt, a) - self.gold_score(prompt, b)
        if noise <= 0:
            return 1.0 if delta > 0 else (0.0 if delta < 0 else 0.5)
        return _sigmoid(delta / noise)

    def rank_responses(self, prompt: str, responses: Sequence[str], rng: random.Random,
                       noise: float = DEFAULT_LABELER_NOISE) -> list[int]:
        """One simulated labeler ranks ``responses``: a permutation of ``range(K)``, best first.

        Sampled from Plackett-Luce on gold scores with temperature τ = ``noise``
        (:func:`plackett_luce_ranking`); so for K = 2, P(a ≻ b) = σ((g_a − g_b)/τ).
        ``noise = 0`` is a perfect labeler (ties broken by position).
        """
        scores = [self.gold_score(prompt, r) for r in responses]
        return plackett_luce_ranking(scores, rng, noise)

    def calibration_pairs(self, n_pairs: int, seed: int = 0) -> list[tuple[str, str, str]]:
        """Typical comparison pairs: (prompt, a, b) with a train prompt and two responses by two
        independently drawn labelers (the kind of pair the labelers rank)."""
        rng = random.Random(f"world|{self.seed}|pairs|{seed}")
        train = self._by_split["train"]
        out = []
        for _ in range(n_pairs):
            p = rng.choice(train)
            out.append((p, self.write_response(p, rng), self.write_response(p, rng)))
        return out

    def expected_agreement(self, noise: float, n_pairs: int = 4000, seed: int = 0) -> float:
        """Exact mean over :meth:`calibration_pairs` of p² + (1 − p)², p = σ(Δg/τ): the chance that two
        independent labelers pick the same winner."""
        deltas = [self.gold_score(p, a) - self.gold_score(p, b) for p, a, b in self.calibration_pairs(n_pairs, seed)]
        return _mean_agreement(deltas, noise)

    def labeler_agreement(self, noise: float = DEFAULT_LABELER_NOISE, n_pairs: int = 2000, seed: int = 0) -> float:
        """Monte-Carlo agreement: two independent simulated labelers (:meth:`rank_responses`) each
        pick the better of every pair of :meth:`calibration_pairs`; the fraction where they agree."""
        rng_a = random.Random(f"world|{self.seed}|labeler-a|{seed}")
        rng_b = random.Random(f"world|{self.seed}|labeler-b|{seed}")
        agree = 0
        pairs = self.calibration_pairs(n_pairs, seed)
        for p, a, b in pairs:
            agree += self.rank_responses(p, [a, b], rng_a, noise)[0] == self.rank_responses(p, [a, b], rng_b, noise)[0]
        return agree / len(pairs)

    def vocabulary(self, n_pretrain: int = 2000) -> set[str]:
        """Distinct words of all prompts, a demonstration per prompt and ``n_pretrain`` pretraining texts."""
        out: set[str] = set()
        for p in self._order:
            out.update(words_of(p))
        for split in SPLITS:
            for d in self.demonstrations(split):
                out.update(words_of(d["response"]))
        for t in self.pretraining_corpus(n_pretrain):
            out.update(words_of(t))
        return out


def _mean_agreement(deltas: Sequence[float], noise: float) -> float:
    total = 0.0
    for d in deltas:
        p = _sigmoid(d / noise)
        total += p * p + (1 - p) * (1 - p)
    return total / len(deltas)


def build_world(seed: int = 0) -> World:
    """``World(seed)``: the instruction world for ``seed``."""
    return World(seed)


def labeler_agreement(noise: float = DEFAULT_LABELER_NOISE, n_pairs: int = 2000, seed: int = 0,
                      world: World | None = None) -> float:
    """:meth:`World.labeler_agreement` of ``world`` (default ``World(seed)``)."""
    return (world or World(seed)).labeler_agreement(noise, n_pairs, seed)


def calibrate_labeler_noise(target: float = 0.73, n_pairs: int = 4000, seed: int = 0,
                            world: World | None = None) -> float:
    """The τ at which :meth:`World.expected_agreement` equals ``target`` (bisection on log τ).

    Agreement falls monotonically from (1 + share of untied pairs)/2 at τ → 0 to 1/2 at τ → ∞.
    This is how :data:`DEFAULT_LABELER_NOISE` was chosen (rounded to 2 decimals).
    """
    world = world or World(seed)
    deltas = [world.gold_score(p, a) - world.gold_score(p, b) for p, a, b in world.calibration_pairs(n_pairs, seed)]
    lo, hi = math.log(1e-3), math.log(1e2)
    if not _mean_agreement(deltas, math.exp(hi)) < target < _mean_agreement(deltas, math.exp(lo)):
        raise ValueError(f"target agreement {target} is out of reach on these pairs")
    for _ in range(60):
        mid = (lo + hi) / 2
        if _mean_agreement(deltas, math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)
