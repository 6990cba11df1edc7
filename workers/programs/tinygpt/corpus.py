"""A deterministic, procedurally generated English-like corpus.

Training must work offline and be reproducible byte for byte, so instead of
downloading text we generate it: small word lists, sentence templates and a
fixed-seed ``random.Random``.  The generator's seed is a constant (not the
training seed) so every run sees the same data and the same dataset hash.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CORPUS_BYTES",
    "CORPUS_SEED",
    "VAL_FRACTION",
    "Corpus",
    "DataError",
    "bytes_to_tensor",
    "generate_text",
    "load_corpus",
]

ENV_DATASET_PATH = "CONTROLPLANE_DATASET_PATH"
MIN_DATASET_BYTES = 4096
CORPUS_SEED = 0x7197
CORPUS_BYTES = 320_000
VAL_FRACTION = 0.1


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(text.split(", "))


_NAMES = _words(
    "Ada Basil Clara Dmitri Edith Felix Greta Hugo Iris Jonas Kira Leo Mira Nils Olga Pavel "
    "Quinn Rosa Silas Tess"
)
_NOUNS = _words(
    "river lantern garden engine letter window mountain harbor kettle forest bridge violin "
    "market compass tower meadow library wagon candle orchard clock ship village storm mirror "
    "road bell field"
)
_ADJECTIVES = _words(
    "old quiet bright narrow golden broken distant small heavy gentle cold crooked silver empty "
    "green warm hidden tall patient strange"
)
_VERBS_PAST = _words(
    "found carried painted followed repaired watched opened built lost crossed cleaned counted "
    "described remembered sold visited measured"
)
_VERBS_INTRANSITIVE = _words("waited laughed slept listened wandered hesitated sang worked rested")
_ADVERBS = _phrases("slowly, carefully, quietly, suddenly, happily, again, at last, once more")
_PREPOSITIONS = ("near", "behind", "beside", "under", "beyond", "across", "inside", "above")
_TIMES = _phrases(
    "In the morning, At noon, Later that day, In the evening, At midnight, Before dawn, "
    "After the rain, On the first day of spring, Every winter, Long ago"
)
_WEATHER = ("rain", "snow", "wind", "fog", "sunlight", "thunder")
_FEELINGS = ("glad", "tired", "curious", "worried", "proud", "calm", "afraid", "hopeful")
_NUMBER_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "ch", "sh", "x")) else noun + "s"


def _noun_phrase(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    if rng.random() < 0.6:
        adjective = rng.choice(_ADJECTIVES)
        return f"the {adjective} {noun}"
    return f"the {noun}"


def _indefinite(rng: random.Random) -> str:
    adjective = rng.choice(_ADJECTIVES)
    return f"{_article(adjective)} {adjective} {rng.choice(_NOUNS)}"


def _sentence(rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    other = rng.choice(_NAMES)
    template = rng.randrange(10)
    # Each branch draws its words left to right, so the text reads as it is generated.
    if template == 0:
        verb, thing, prep = rng.choice(_VERBS_PAST), _noun_phrase(rng), rng.choice(_PREPOSITIONS)
        return f"{name} {verb} {thing} {prep} {_noun_phrase(rng)}."
    if template == 1:
        when, verb = rng.choice(_TIMES), rng.choice(_VERBS_INTRANSITIVE)
        return f"{when}, {name} {verb} {rng.choice(_ADVERBS)}."
    if template == 2:
        return f"There was {_indefinite(rng)} {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}."
    if template == 3:
        thing, prep = _noun_phrase(rng), rng.choice(_PREPOSITIONS).capitalize()
        return f'"Where is {thing}?" asked {name}. "{prep} {_noun_phrase(rng)}," said {other}.'
    if template == 4:
        count, things = rng.choice(_NUMBER_WORDS), _plural(rng.choice(_NOUNS))
        return f"{name} counted {count} {things} and felt {rng.choice(_FEELINGS)}."
    if template == 5:
        weather, how = rng.choice(_WEATHER), rng.choice(_ADVERBS)
        return f"The {weather} came {how}, and {name} {rng.choice(_VERBS_INTRANSITIVE)}."
    if template == 6:
        return f"{name} and {other} {rng.choice(_VERBS_PAST)} {_indefinite(rng)} together."
    if template == 7:
        day, year = rng.randint(1, 28), rng.randint(1850, 1950)
        return f"On day {day} of the year {year}, {name} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng)}."
    if template == 8:
        feeling, verb = rng.choice(_FEELINGS), rng.choice(_VERBS_INTRANSITIVE)
        return f"Because {name} was {feeling}, {name} {verb} {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}."
    when, thing = rng.choice(_TIMES), _noun_phrase(rng)
    return f"{when}, {thing} was {rng.choice(_ADJECTIVES)} and {rng.choice(_ADJECTIVES)}."


def generate_text(n_bytes: int = CORPUS_BYTES, seed: int = CORPUS_SEED) -> bytes:
    """Exactly ``n_bytes`` of ASCII prose: paragraphs of 3-7 template sentences."""
    rng = random.Random(seed)  # noqa: S311 - reproducible text, not security
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 7))) + "\n\n"
        parts.append(paragraph)
        size += len(paragraph)
    return "".join(parts).encode("ascii")[:n_bytes]


@dataclass(frozen=True)
class Corpus:
    train: bytes
    val: bytes
    sha256: str


class DataError(ValueError):
    """The dataset cannot be trained on; the message is meant for the user."""


def load_corpus(path: str | None = None) -> Corpus:
    """The train/val split of the dataset staged at ``path`` (default: CONTROLPLANE_DATASET_PATH),
    or of the generated corpus when there is none; the last :data:`VAL_FRACTION` is validation."""
    return _load_corpus(path if path is not None else os.environ.get(ENV_DATASET_PATH, ""))


@functools.cache
def _load_corpus(path: str) -> Corpus:
    data = Path(path).read_bytes() if path else generate_text()
    if len(data) < MIN_DATASET_BYTES:
        raise DataError(f"the dataset has {len(data)} bytes; tinygpt needs at least {MIN_DATASET_BYTES}")
    split = int(len(data) * (1 - VAL_FRACTION))
    return Corpus(train=data[:split], val=data[split:], sha256=hashlib.sha256(data).hexdigest())


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    """Byte ids as an int64 tensor (the dtype embedding lookups and losses want)."""
    # frombuffer needs a writable buffer to avoid a warning; bytearray copies once.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
