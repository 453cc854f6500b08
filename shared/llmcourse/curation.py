"""Curating multimodal training data, in miniature: web-crawl-style JSON records of image-caption pairs,
tabular human annotations, and a filtering pipeline (schema, licence, caption quality, exact and
near-duplicate removal, test-set decontamination, image-text agreement).

The "crawl" is simulated from the scikit-learn digits (:func:`make_web_crawl`) with the problems real
crawls have, in known proportions, so that every filter can be checked against the truth:

- captions that describe another digit (alt-text that does not match the image);
- boilerplate captions ("IMG_0412.png", "click to enlarge") and captions in another language;
- exact duplicates and near-duplicates (the same scan re-encoded with slight noise);
- missing or non-permissive licences;
- copies of *test* images (evaluation contamination).

Every record keeps a hidden ``_truth`` entry (the real digit and which problem was injected) that the
pipeline never reads; the notebook uses it to measure what each filter caught. Data card:
``data/digits.md``. Taught in ``modules/04_multimodal/07_data_and_limits.py``.

References: Schuhmann et al. 2022, "LAION-5B" (CLIP-score filtering), https://arxiv.org/abs/2210.08402 ;
Gadre et al. 2023, "DataComp", https://arxiv.org/abs/2304.14108 ; Gebru et al. 2021, "Datasheets for
Datasets", https://arxiv.org/abs/1803.09010 ; Lee et al. 2022, "Deduplicating Training Data Makes
Language Models Better", https://arxiv.org/abs/2107.06499
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .digits import NUMBER_WORDS, TRAIN_TEMPLATES, caption

__all__ = [
    "PERMISSIVE_LICENSES",
    "RECORD_FIELDS",
    "make_web_crawl",
    "validate_record",
    "pixel_sha256",
    "average_hash",
    "hamming",
    "caption_digit",
    "is_boilerplate",
    "is_english",
    "ENGLISH_WORDS",
    "simulate_annotations",
    "majority_vote",
    "FunnelStage",
    "curate",
]

PERMISSIVE_LICENSES = ("cc0-1.0", "cc-by-4.0", "public-domain")
RECORD_FIELDS = {"id": str, "source_url": str, "license": str, "width": int, "height": int, "sha256": str,
                 "caption": str, "pixels": list}
_BOILERPLATE = ("IMG_{:04d}.png", "click to enlarge", "image", "untitled", "scan {:03d}", "thumbnail")
_FOREIGN = {  # template, number words: French, German, Spanish
    "fr": ("un {} écrit à la main", ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf")),
    "de": ("die Ziffer {}", ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")),
    "es": ("un {} escrito a mano", ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve")),
}
#: The English words our captions use (a stand-in for a language-identification model such as fastText).
ENGLISH_WORDS = frozenset(w for t in TRAIN_TEMPLATES for w in t.replace("{}", "").split()) | set(NUMBER_WORDS) \
    | {"an", "digit", "number"}


def pixel_sha256(pixels: Sequence[int]) -> str:
    """SHA-256 of the image's grey levels as bytes: identical images, identical hash."""
    return hashlib.sha256(bytes(int(p) for p in pixels)).hexdigest()


def average_hash(pixels: Sequence[int]) -> int:
    """A 64-bit perceptual hash of an 8x8 image: bit i is 1 where pixel i is brighter than the mean.
    Small changes (noise, re-encoding) flip few bits, so near-duplicates have a small Hamming distance."""
    if len(pixels) != 64:
        raise ValueError(f"average_hash expects 64 pixels (8x8), got {len(pixels)}")
    mean = sum(pixels) / 64
    return sum(1 << i for i, p in enumerate(pixels) if p > mean)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return bin(a ^ b).count("1")


def caption_digit(text: str) -> int | None:
    """The digit an English caption names (its number word), or None if it names none or several."""
    found = {NUMBER_WORDS.index(w) for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS}
    return found.pop() if len(found) == 1 else None


def is_boilerplate(text: str) -> bool:
    """File names, UI text and one-word captions carry no description of the image."""
    t = text.strip().lower()
    return (len(t.split()) < 2 or re.fullmatch(r"(img_\d+\.\w+|scan \d+|click to enlarge|thumbnail|untitled)", t)
            is not None)


def is_english(text: str, vocabulary: frozenset[str] = ENGLISH_WORDS, min_share: float = 0.8) -> bool:
    """Dictionary-based language identification: at least ``min_share`` of the words are known English
    words. (Crawls use a trained classifier such as fastText's; the idea is the same.)"""
    words = re.findall(r"[^\W\d_]+", text.lower())
    return bool(words) and sum(w in vocabulary for w in words) / len(words) >= min_share


def _pixels(image: torch.Tensor) -> list[int]:
    return [int(round(v)) for v in (image.flatten() * 16).tolist()]  # back to the original 0..16 levels


def make_web_crawl(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor | None = None,
                   test_labels: torch.Tensor | None = None, n: int = 600, seed: int = 0, p_wrong: float = 0.15, p_boilerplate: float = 0.06,
                   p_foreign: float = 0.05, p_duplicate: float = 0.08, p_near_duplicate: float = 0.06,
                   p_bad_license: float = 0.07, n_test_copies: int = 12) -> list[dict]:
    """Simulated web-crawl records (dicts ready for ``json.dumps``) from images (N, 1, 8, 8) in [0, 1]
    and their labels. Problems are injected with the given probabilities; ``n_test_copies`` records are
    copies of ``test_images`` (contamination, correctly captioned with ``test_labels``). Each record has a
    hidden ``_truth`` dict: the true digit and the injected problem."""
    if (test_images is None) != (test_labels is None):
        raise ValueError("pass both test_images and test_labels, or neither")
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.rand((), generator=g).item()
    pick = lambda k: int(torch.randint(0, k, (), generator=g))
    records: list[dict] = []
    fresh = torch.randperm(len(labels), generator=g).tolist()

    def add(pixels, digit, problem, text=None, license_=None):
        i = len(records)
        text = caption(digit, TRAIN_TEMPLATES[pick(len(TRAIN_TEMPLATES))]) if text is None else text
        if license_ is None:
            license_ = PERMISSIVE_LICENSES[pick(len(PERMISSIVE_LICENSES))]
        records.append({"id": f"crawl-{i:05d}", "source_url": f"https://forms.example.org/scans/{seed}/{i:05d}.png",
                        "license": license_, "width": 8, "height": 8, "sha256": pixel_sha256(pixels),
                        "caption": text, "pixels": pixels,
                        "_truth": {"digit": digit, "problem": problem}})

    while len(records) < n - n_test_copies:
        r = rand()
        if records and r < p_duplicate:  # the same file crawled twice
            src = records[pick(len(records))]
            add(list(src["pixels"]), src["_truth"]["digit"], "duplicate", src["caption"], src["license"])
            continue
        r -= p_duplicate
        if records and r < p_near_duplicate:  # re-encoded copy: a few grey levels change by 1
            src = records[pick(len(records))]
            pixels = [min(16, max(0, p + (pick(3) - 1) * (rand() < 0.15))) for p in src["pixels"]]
            add(pixels, src["_truth"]["digit"], "near-duplicate", src["caption"], src["license"])
            continue
        r -= p_near_duplicate
        if not fresh:
            raise ValueError(f"n={n} needs more distinct source images than the {len(labels)} given")
        j = fresh.pop()  # each source image is crawled once (copies are made on purpose above)
        digit, pixels = int(labels[j]), _pixels(images[j])
        if r < p_wrong:
            wrong = (digit + 1 + pick(9)) % 10
            add(pixels, digit, "wrong caption", caption(wrong, TRAIN_TEMPLATES[pick(len(TRAIN_TEMPLATES))]))
        elif (r := r - p_wrong) < p_boilerplate:
            add(pixels, digit, "boilerplate", _BOILERPLATE[pick(len(_BOILERPLATE))].format(pick(1000)))
        elif (r := r - p_boilerplate) < p_foreign:
            template, words = list(_FOREIGN.values())[pick(len(_FOREIGN))]
            add(pixels, digit, "other language", template.format(words[digit]))
        elif (r := r - p_foreign) < p_bad_license:
            add(pixels, digit, "licence", license_=("all-rights-reserved", "unknown")[pick(2)])
        else:
            add(pixels, digit, "clean")
    if test_images is not None:
        for _ in range(n_test_copies):  # evaluation images that leaked onto the web
            j = pick(len(test_images))
            add(_pixels(test_images[j]), int(test_labels[j]), "test copy")
    order = torch.randperm(len(records), generator=g).tolist()
    return [records[i] for i in order]


def validate_record(record: dict) -> list[str]:
    """Schema problems of a record (empty list = valid): missing fields, wrong types, a hash that does
    not match the pixels, pixel values outside 0..16."""
    problems = [f"missing {k}" for k in RECORD_FIELDS if k not in record]
    problems += [f"{k} should be {t.__name__}" for k, t in RECORD_FIELDS.items()
                 if k in record and not isinstance(record[k], t)]
    if not problems:
        pixels = record["pixels"]
        if len(pixels) != record["width"] * record["height"] or any(not 0 <= p <= 16 for p in pixels):
            problems.append("pixels do not match width x height or leave 0..16")
        elif pixel_sha256(pixels) != record["sha256"]:
            problems.append("sha256 does not match the pixels")
    return problems


def simulate_annotations(records: Sequence[dict], error_rates: dict[str, float], seed: int = 0) -> list[dict]:
    """Tabular annotations: every annotator (name -> error rate) judges every record, answering "which
    digit is this?"; a wrong answer is a random other digit. One row per (record, annotator):
    ``{"record_id", "annotator", "digit", "seconds"}``. Uses the hidden truth to simulate people."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for rec in records:
        truth = rec["_truth"]["digit"]
        for name, err in error_rates.items():
            wrong = torch.rand((), generator=g).item() < err
            answer = (truth + 1 + int(torch.randint(0, 9, (), generator=g))) % 10 if wrong else truth
            seconds = round(2.0 + 6.0 * torch.rand((), generator=g).item() * (0.3 if err > 0.3 else 1.0), 1)
            rows.append({"record_id": rec["id"], "annotator": name, "digit": answer, "seconds": seconds})
    return rows


def majority_vote(rows: Sequence[dict]) -> dict[str, tuple[int, float]]:
    """Aggregate annotation rows per record: ``{record_id: (majority digit, agreement)}``, agreement being
    the share of annotators who gave the majority answer (ties: the smallest digit)."""
    by_record: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_record[row["record_id"]].append(int(row["digit"]))
    out = {}
    for rid, answers in by_record.items():
        counts = Counter(answers)
        best = max(counts.values())
        digit = min(d for d, c in counts.items() if c == best)
        out[rid] = (digit, best / len(answers))
    return out


class FunnelStage(NamedTuple):
    """One step of :func:`curate`: its ``name``, records ``kept`` after it and ``removed`` by it."""

    name: str
    kept: int
    removed: int


def curate(records: Sequence[dict], agreement: Callable[[list[int], int], float] | None = None,
           forbidden_hashes: set[str] = frozenset(), min_agreement: float = 0.1,
           near_duplicate_bits: int = 6, near_duplicate_l1: int = 24) -> tuple[list[dict], list[FunnelStage]]:
    """Filter ``records`` in stages; return the kept records and the funnel.

    Stages: valid schema; permissive licence; descriptive English caption naming one digit (drops
    boilerplate and other languages); not a copy of an evaluation image (``forbidden_hashes``, SHA-256
    of the test set); exact duplicates (same SHA-256, keep the first); near-duplicates in two steps, as at
    scale: the average hash within ``near_duplicate_bits`` of a kept image proposes candidates (cheap,
    indexable), and a pixel-level L1 distance of at most ``near_duplicate_l1`` grey levels confirms them
    (different handwriting often shares a coarse hash); image-text agreement: ``agreement(pixels, digit)``
    (e.g. a classifier's probability that the image shows the caption's digit, the analogue of LAION's
    CLIP-score threshold) must reach ``min_agreement``. Never reads ``_truth``."""
    funnel: list[FunnelStage] = []
    kept = list(records)

    def stage(name: str, keep: Callable[[dict], bool]) -> None:
        nonlocal kept
        before = len(kept)
        kept = [r for r in kept if keep(r)]
        funnel.append(FunnelStage(name, len(kept), before - len(kept)))

    stage("valid schema", lambda r: not validate_record(r))
    stage("permissive licence", lambda r: r["license"] in PERMISSIVE_LICENSES)
    stage("descriptive English caption", lambda r: not is_boilerplate(r["caption"]) and is_english(r["caption"])
          and caption_digit(r["caption"]) is not None)
    stage("not a test-set image", lambda r: r["sha256"] not in forbidden_hashes)
    seen: set[str] = set()

    def first_copy(r: dict) -> bool:
        new = r["sha256"] not in seen
        seen.add(r["sha256"])
        return new

    stage("exact duplicates removed", first_copy)
    kept_hashes: list[tuple[int, list[int]]] = []

    def not_near(r: dict) -> bool:
        h, pixels = average_hash(r["pixels"]), r["pixels"]
        for other_hash, other_pixels in kept_hashes:
            if hamming(h, other_hash) <= near_duplicate_bits and \
                    sum(abs(a - b) for a, b in zip(pixels, other_pixels)) <= near_duplicate_l1:
                return False
        kept_hashes.append((h, pixels))
        return True

    stage("near-duplicates removed", not_near)
    if agreement is not None:
        stage("image-text agreement", lambda r: agreement(r["pixels"], caption_digit(r["caption"])) >= min_agreement)
    return kept, funnel
