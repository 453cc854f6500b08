"""Data preparation for fine-tuning: task data sets with exact answers, prompt/completion templates,
augmentation, deduplication, quality filters and label noise.

Fine-tuning data is a list of (prompt, completion) pairs. Everything here is plain Python on strings,
deterministic given a seed, and small enough to read in one sitting:

- tasks: :func:`make_addition` (GOAT-style arithmetic: Liu & Low 2023, "Goat: Fine-tuned LLaMA
  Outperforms GPT-4 on Arithmetic Tasks", https://arxiv.org/abs/2305.14201), :func:`make_extraction`
  (a sentence -> JSON fields), :func:`load_stdlib_topics` (docstring -> standard-library area, a text
  classification set made from the course corpus); data card: ``data/fine_tuning_tasks.md``;
- :class:`Template`: how a pair becomes training text (prefix, separator, end-of-completion marker);
- augmentation in the style of EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting
  Performance on Text Classification Tasks", https://arxiv.org/abs/1901.11196): :func:`synonym_replace`,
  :func:`random_deletion`, :func:`random_swap`, :func:`add_typos`;
- cleaning: :func:`deduplicate` (exact and near duplicates by shingle Jaccard similarity, as in Lee et al.
  2022, "Deduplicating Training Data Makes Language Models Better", https://arxiv.org/abs/2107.06499),
  :func:`quality_filter` (heuristic rules in the spirit of Gopher's, Rae et al. 2021, appendix A);
- :func:`add_label_noise` for the "quality beats quantity" experiment (Zhou et al. 2023, "LIMA: Less Is
  More for Alignment", https://arxiv.org/abs/2305.11206).

Taught in ``modules/02_fine_tuning/06_data_preparation.py`` (and lab 2).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .data import STDLIB_MODULES, load_corpus

__all__ = [
    "Example",
    "make_addition",
    "number_to_words",
    "make_number_words",
    "make_extraction",
    "split_examples",
    "TextDataset",
    "TOPICS",
    "load_stdlib_topics",
    "Template",
    "SYNONYMS",
    "synonym_replace",
    "random_deletion",
    "random_swap",
    "add_typos",
    "augment",
    "normalize_text",
    "shingles",
    "jaccard",
    "DedupResult",
    "deduplicate",
    "FilterResult",
    "quality_filter",
    "add_label_noise",
]


class Example(NamedTuple):
    """One fine-tuning example: the ``prompt`` (input) and the exact ``completion`` expected."""

    prompt: str
    completion: str


# ----------------------------------------------------------------------------------------------------
# Tasks with exact answers
# ----------------------------------------------------------------------------------------------------
def make_addition(n: int, digits: int = 2, seed: int = 0, exclude: Sequence[Example] = ()) -> list[Example]:
    """``n`` distinct addition problems ``"a+b="`` -> ``"c"`` with ``a`` and ``b`` drawn uniformly from
    0 .. 10**digits - 1 (written without leading zeros), none of them in ``exclude`` (e.g. a test set).
    GOAT (Liu & Low 2023) fine-tunes on exactly this kind of data; the answer is right or wrong."""
    if digits < 1 or n < 1:
        raise ValueError(f"n ({n}) and digits ({digits}) must be positive")
    space = 10 ** (2 * digits)
    banned = {e.prompt for e in exclude}
    if n > space - len(banned):
        raise ValueError(f"only {space - len(banned)} distinct {digits}-digit problems are left, asked for {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < n:
        a, b = rng.randrange(10**digits), rng.randrange(10**digits)
        prompt = f"{a}+{b}="
        if prompt in seen or prompt in banned:
            continue
        seen.add(prompt)
        out.append(Example(prompt, str(a + b)))
    return out


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1000, without "and" or hyphens: 473 -> "four hundred seventy three"."""
    if not 0 <= n < 1000:
        raise ValueError(f"n must be in 0..999, got {n}")
    hundreds, rest = divmod(n, 100)
    words = [_ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        words.append(_TENS[rest // 10])
        if rest % 10:
            words.append(_ONES[rest % 10])
    elif rest or not hundreds:
        words.append(_ONES[rest])
    return " ".join(words)


def make_number_words(n_test: int = 150, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Number words -> digits, all 1000 numbers 0..999 split into (train, test) with ``n_test`` held-out
    numbers: "four hundred seventy three" -> "473". Every answer is exact, the inputs are short (at most
    27 characters) and the held-out numbers are new *combinations* of words seen in training, so the task
    measures whether a model learned the rule (hundreds, tens, units) rather than a lookup table."""
    examples = [Example(number_to_words(i), str(i)) for i in range(1000)]
    return split_examples(examples, n_test, seed)


# Written for the course: short lists, so the JSON fields are unambiguous.
_NAMES = ("Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia",
          "Omar", "Pia", "Raj", "Sol", "Tess", "Uma", "Vic", "Wen", "Yara", "Zed")
_ITEMS = ("books", "cups", "dates", "eggs", "figs", "hats", "inks", "jars", "kites", "lamps", "maps", "mugs",
          "nails", "pears", "pens", "rugs", "socks", "tapes", "vases")
_PHRASES = (
    "{name} bought {qty} {item}",
    "{name}: {qty} {item}",
    "{qty} {item} for {name}",
    "Send {name} {qty} {item}",
    "{name} wants {qty} {item}",
)


def make_extraction(n: int, seed: int = 0, exclude: Sequence[Example] = ()) -> list[Example]:
    """``n`` distinct short orders such as "Ada bought 3 figs" with the compact JSON of their fields as the
    completion: ``{"name":"Ada","qty":3,"item":"figs"}`` (keys always in this order, no spaces, so that a
    prompt plus its answer fit in 64 characters). Five phrasings move the fields around, so copying by
    position does not work; the quantity must become a JSON number."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    banned = {e.prompt for e in exclude}
    space = len(_NAMES) * len(_ITEMS) * 98 * len(_PHRASES)
    if n > space - len(banned):
        raise ValueError(f"only {space - len(banned)} distinct sentences are left, asked for {n}")
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        fields = {"name": rng.choice(_NAMES), "qty": rng.randint(2, 99), "item": rng.choice(_ITEMS)}
        sentence = rng.choice(_PHRASES).format(**fields)
        if sentence in seen or sentence in banned:
            continue
        seen.add(sentence)
        out.append(Example(sentence, json.dumps(fields, separators=(",", ":"))))
    return out


def split_examples(examples: Sequence, n_test: int, seed: int = 0) -> tuple[list, list]:
    """Shuffle (seeded) and split into (train, test) with ``n_test`` test items."""
    if not 0 < n_test < len(examples):
        raise ValueError(f"n_test must be in 1..{len(examples) - 1}, got {n_test}")
    items = list(examples)
    random.Random(seed).shuffle(items)
    return items[n_test:], items[:n_test]


# ----------------------------------------------------------------------------------------------------
# Text classification: which area of the standard library does a docstring come from?
# ----------------------------------------------------------------------------------------------------
TOPICS: dict[str, tuple[str, ...]] = {
    "network": ("http", "urllib", "smtplib", "ftplib", "imaplib", "poplib", "nntplib", "socket", "socketserver",
                "xmlrpc", "ssl", "wsgiref", "telnetlib", "smtpd", "asynchat", "asyncore", "webbrowser",
                "ipaddress"),
    "formats": ("email", "mailbox", "mimetypes", "quopri", "base64", "json", "csv", "html", "xml", "plistlib",
                "configparser", "tomllib", "uu", "netrc", "mailcap"),
    "concurrency": ("asyncio", "threading", "multiprocessing", "concurrent", "queue", "subprocess", "selectors",
                    "signal", "sched", "contextvars"),
    "files": ("os", "pathlib", "shutil", "tarfile", "zipfile", "gzip", "bz2", "lzma", "tempfile", "glob",
              "fnmatch", "filecmp", "_pyio", "stat", "posixpath", "ntpath", "genericpath", "fileinput",
              "zipimport", "shelve", "dbm"),
    "numbers": ("_pydecimal", "decimal", "fractions", "statistics", "random", "numbers", "colorsys"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "traceback", "profile", "cProfile", "pstats",
                "timeit", "logging", "warnings", "tracemalloc", "cgitb"),
}

_HEADER = re.compile(r"^(?:module |class )?([A-Za-z_][\w]*)(?:\.[\w.]*)?(?:\(.*\))?$")


@dataclass
class TextDataset:
    """Texts with integer labels; ``label_names[label]`` is the class name."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        return TextDataset([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names)


def _docstring_entries(text: str):
    """(module, docstring) pairs of the course corpus: a header line after a blank line starts an entry."""
    modules = set(STDLIB_MODULES)
    current, lines = None, []
    previous_blank = True
    for line in text.split("\n"):
        match = _HEADER.match(line) if previous_blank and line else None
        if match and match.group(1) in modules and (line.startswith(("module ", "class ")) or "(" in line):
            if current is not None:
                yield current, "\n".join(lines).strip()
            current, lines = match.group(1), []
        else:
            lines.append(line)
        previous_blank = not line.strip()
    if current is not None:
        yield current, "\n".join(lines).strip()


def load_stdlib_topics(per_class: int = 120, max_chars: int = 240, min_words: int = 6, seed: int = 0) -> TextDataset:
    """A balanced 6-class text classification set: the first paragraph of standard-library docstrings
    (from :func:`llmcourse.data.load_corpus`), labelled by the area of the library they document
    (:data:`TOPICS`: network, formats, concurrency, files, numbers, testing).

    Paragraphs shorter than ``min_words`` words are skipped, longer ones are cut at a word boundary near
    ``max_chars``; exact duplicate paragraphs are kept once; each class is a seeded sample of ``per_class``
    paragraphs (raises if a class has fewer). Deterministic. Data card: ``data/fine_tuning_tasks.md``."""
    area = {module: i for i, modules in enumerate(TOPICS.values()) for module in modules}
    by_class: list[list[str]] = [[] for _ in TOPICS]
    seen: set[str] = set()
    for module, doc in _docstring_entries(load_corpus()):
        if module not in area:
            continue
        paragraph = " ".join(doc.split("\n\n")[0].split())
        if len(paragraph.split()) < min_words or paragraph in seen:
            continue
        seen.add(paragraph)
        if len(paragraph) > max_chars:
            paragraph = paragraph[:max_chars].rsplit(" ", 1)[0]
        by_class[area[module]].append(paragraph)
    rng = random.Random(seed)
    texts, labels = [], []
    for label, items in enumerate(by_class):
        if len(items) < per_class:
            raise ValueError(f"class {list(TOPICS)[label]!r} has {len(items)} paragraphs, fewer than {per_class}")
        for text in rng.sample(items, per_class):
            texts.append(text)
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return TextDataset([texts[i] for i in order], [labels[i] for i in order], list(TOPICS))


# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """How a (prompt, completion) pair becomes text: ``prefix + prompt + separator`` is what the model
    reads, ``completion + eos`` what it must write. The separator tells the model where the question ends
    and the answer starts; ``eos`` teaches it to stop (without it, generation runs on). The *same*
    template must be used at training and inference time."""

    prefix: str = ""  # before the prompt, e.g. an instruction or "Q: "
    separator: str = ""  # between prompt and completion, e.g. "\nA: "
    eos: str = "\n"  # after the completion: the stop marker ("" = none, a classic mistake)

    def prompt_text(self, prompt: str) -> str:
        return f"{self.prefix}{prompt}{self.separator}"

    def completion_text(self, completion: str) -> str:
        return f"{completion}{self.eos}"

    def format(self, example: Example) -> str:
        return self.prompt_text(example.prompt) + self.completion_text(example.completion)

    def parse(self, generated: str) -> str:
        """The answer in a generated continuation: the text before the first ``eos`` (all of it when
        ``eos`` is empty or never produced)."""
        return generated.split(self.eos, 1)[0] if self.eos else generated


# ----------------------------------------------------------------------------------------------------
# Augmentation (EDA)
# ----------------------------------------------------------------------------------------------------
# A small synonym table written for the course (EDA uses WordNet, which is not available offline).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "return": ("give", "yield"), "returns": ("gives", "yields"), "create": ("make", "build"),
    "creates": ("makes", "builds"), "file": ("document",), "files": ("documents",), "list": ("sequence",),
    "object": ("instance", "item"), "value": ("number", "quantity"), "values": ("numbers", "quantities"),
    "get": ("fetch", "obtain"), "set": ("assign", "define"), "read": ("load", "scan"), "write": ("store", "save"),
    "send": ("transmit", "dispatch"), "start": ("begin", "launch"), "stop": ("end", "halt"),
    "error": ("failure", "fault"), "raise": ("throw", "signal"), "check": ("verify", "test"),
    "new": ("fresh",), "given": ("supplied", "provided"), "specified": ("given", "requested"),
    "string": ("text",), "data": ("content", "information"), "message": ("note", "mail"),
    "close": ("shut",), "open": ("unlock",), "run": ("execute",), "called": ("invoked",),
    "used": ("employed",), "use": ("employ", "apply"), "method": ("function", "routine"),
    "class": ("type",), "name": ("label", "identifier"), "default": ("standard", "usual"),
    "current": ("present", "active"), "number": ("count", "amount"), "large": ("big",), "small": ("little",),
}


def _words(text: str) -> list[str]:
    return text.split()


def synonym_replace(text: str, n: int = 1, rng: random.Random | None = None,
                    synonyms: dict[str, Sequence[str]] = SYNONYMS) -> str:
    """Replace up to ``n`` distinct words that have an entry in ``synonyms`` by a random synonym (matching
    is case-insensitive on the bare word; punctuation and a leading capital are kept)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = rng or random.Random(0)
    words = _words(text)
    candidates = [i for i, w in enumerate(words) if re.sub(r"\W", "", w).lower() in synonyms]
    rng.shuffle(candidates)
    for i in candidates[:n]:
        m = re.match(r"^(\W*)(\w+)(\W*)$", words[i])
        if not m:
            continue
        lead, core, trail = m.groups()
        choice = rng.choice(list(synonyms[core.lower()]))
        if core[0].isupper():
            choice = choice[0].upper() + choice[1:]
        words[i] = lead + choice + trail
    return " ".join(words)


def random_deletion(text: str, p: float = 0.1, rng: random.Random | None = None) -> str:
    """Delete each word independently with probability ``p``; at least one word always survives (a
    random one, when every word was drawn for deletion)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    rng = rng or random.Random(0)
    words = _words(text)
    if len(words) <= 1:
        return text
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else rng.choice(words)


def random_swap(text: str, n: int = 1, rng: random.Random | None = None) -> str:
    """Swap the positions of two random words, ``n`` times (the multiset of words is unchanged)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = rng or random.Random(0)
    words = _words(text)
    if len(words) < 2:
        return text
    for _ in range(n):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def add_typos(text: str, p: float = 0.03, rng: random.Random | None = None) -> str:
    """Keyboard-slip noise: each letter, with probability ``p``, is dropped, doubled, or swapped with the
    next character (one of the three at random)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    rng = rng or random.Random(0)
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < p:
            kind = rng.randrange(3)
            if kind == 0:  # drop
                i += 1
                continue
            if kind == 1:  # double
                out += [c, c]
                i += 1
                continue
            if i + 1 < len(chars):  # swap with the next character
                out += [chars[i + 1], c]
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def augment(texts: Sequence[str], labels: Sequence[int], n_aug: int = 2, seed: int = 0,
            ops: Sequence[str] = ("synonym", "deletion", "swap", "typos")) -> tuple[list[str], list[int]]:
    """The originals plus ``n_aug`` augmented copies of each text (each copy one random operation from
    ``ops``), with the labels repeated. Deterministic for a given ``seed``."""
    table = {"synonym": lambda t, r: synonym_replace(t, 2, r), "deletion": lambda t, r: random_deletion(t, 0.1, r),
             "swap": lambda t, r: random_swap(t, 1, r), "typos": lambda t, r: add_typos(t, 0.03, r)}
    unknown = set(ops) - set(table)
    if unknown or not ops:
        raise ValueError(f"ops must be a non-empty subset of {sorted(table)}, got {list(ops)}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    rng = random.Random(seed)
    out_t, out_l = list(texts), list(labels)
    for text, label in zip(texts, labels):
        for _ in range(n_aug):
            out_t.append(table[rng.choice(list(ops))](text, rng))
            out_l.append(label)
    return out_t, out_l


# ----------------------------------------------------------------------------------------------------
# Deduplication and quality filtering
# ----------------------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: "Hello,  World!" -> "hello world"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The set of word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|A & B| / |A | B| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass
class DedupResult:
    """``keep``: indices of the texts kept (first occurrence wins); ``exact`` and ``near``: (dropped, kept)
    index pairs."""

    keep: list[int]
    exact: list[tuple[int, int]]
    near: list[tuple[int, int]]


def deduplicate(texts: Sequence[str], threshold: float = 0.7, n: int = 3) -> DedupResult:
    """Drop exact duplicates (same :func:`normalize_text`) and near duplicates (word ``n``-gram Jaccard
    similarity >= ``threshold`` with an earlier kept text). Quadratic in the number of texts: fine for the
    few thousand examples of a fine-tuning set (web-scale pipelines use MinHash to avoid the n^2)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    first: dict[str, int] = {}
    keep: list[int] = []
    kept_shingles: list[set] = []
    exact, near = [], []
    for i, text in enumerate(texts):
        key = normalize_text(text)
        if key in first:
            exact.append((i, first[key]))
            continue
        first[key] = i
        sh = shingles(text, n)
        match = next((keep[j] for j, other in enumerate(kept_shingles) if jaccard(sh, other) >= threshold), None)
        if match is not None:
            near.append((i, match))
            continue
        keep.append(i)
        kept_shingles.append(sh)
    return DedupResult(keep, exact, near)


@dataclass
class FilterResult:
    """``keep``: indices that pass every rule; ``reasons``: how many texts each rule rejected (a text
    is counted under the first rule it fails)."""

    keep: list[int]
    reasons: Counter


def quality_filter(texts: Sequence[str], min_words: int = 5, max_words: int = 200,
                   max_symbol_ratio: float = 0.1, max_repeat_ratio: float = 0.3) -> FilterResult:
    """Heuristic quality rules: too few or too many words; too many non-alphanumeric symbols (code, markup
    or tables rather than prose); one word repeated too often (boilerplate, spam)."""
    reasons: Counter = Counter()
    keep = []
    for i, text in enumerate(texts):
        words = text.split()
        non_space = [c for c in text if not c.isspace()]
        symbols = sum(not (c.isalnum() or c in ".,;:'\"()-?!") for c in non_space)
        top = Counter(w.lower() for w in words).most_common(1)
        if len(words) < min_words:
            reasons["too short"] += 1
        elif len(words) > max_words:
            reasons["too long"] += 1
        elif non_space and symbols / len(non_space) > max_symbol_ratio:
            reasons["too many symbols"] += 1
        elif top and len(words) >= 10 and top[0][1] / len(words) > max_repeat_ratio:
            reasons["repetitive"] += 1
        else:
            keep.append(i)
    return FilterResult(keep, reasons)


def add_label_noise(labels: Sequence[int], rate: float, n_classes: int, seed: int = 0) -> list[int]:
    """Flip exactly ``round(rate * N)`` labels (a seeded random subset) to a different class, uniformly."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    rng = random.Random(seed)
    out = list(labels)
    for i in rng.sample(range(len(out)), round(rate * len(out))):
        out[i] = rng.choice([c for c in range(n_classes) if c != out[i]])
    return out
