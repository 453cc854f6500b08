"""The handwritten digits of scikit-learn as a tiny, offline multimodal data set: images, labels,
captions, interleaved image-text sequences, and a word-level tokenizer for the captions.

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" test set inside its wheel
(``sklearn.datasets.load_digits``: 1,797 grey images of 8x8 pixels, values 0..16, about 180 per digit),
so every machine gets the same data without a download. Module 4 builds on it:

- :func:`load_digits_split`: a fixed, stratified train/test split as float tensors (B, 1, 8, 8) in [0, 1];
- :func:`caption` / :func:`make_captions`: short English captions made from the label with templates
  (image-caption pairs for CLIP);
- :class:`WordTokenizer`: whitespace tokens with PAD/UNK/BOS/EOS and an ``<image>`` placeholder;
- :func:`make_interleaved`: sequences like ``<image> this is the digit seven . <image> this is the digit
  two .`` for the Flamingo demo.

The data card is ``data/digits.md``. Taught in ``modules/04_multimodal/01_vit.py``, ``03_clip.py`` and
``04_flamingo.py``. Shape legend: B batch, T tokens, M images per sequence.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "NUMBER_WORDS",
    "TRAIN_TEMPLATES",
    "DigitSplit",
    "load_digits_split",
    "shift_images",
    "digit_batch_fn",
    "caption",
    "make_captions",
    "WordTokenizer",
    "caption_tokenizer",
    "Interleaved",
    "make_interleaved",
]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Caption templates used to build the training pairs. ``{}`` is the number word. Zero-shot prompts
# in the CLIP demo reuse some of these and add one the model never saw.
TRAIN_TEMPLATES = (
    "a handwritten {}",
    "the digit {}",
    "a photo of the number {}",
    "an image of a {}",
    "a {} written by hand",
    "a small grey picture of a {}",
    "this is a {}",
)


class DigitSplit(NamedTuple):
    """Train and test images (N, 1, 8, 8) float32 in [0, 1] and labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitSplit:
    """The 1,797 digits, split once per ``seed`` into train and test, stratified by label.

    With the defaults: 1,437 training and 360 test images. Pixels are divided by 16 (their maximum).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(data.target, dtype=torch.long)  # (N,)
    idx_train, idx_test = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=labels.numpy())
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return DigitSplit(images[idx_train], labels[idx_train], images[idx_test], labels[idx_test])


def shift_images(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Data augmentation: move each image (B, C, H, W) by a random integer offset in
    [-max_shift, max_shift] along each axis, filling with zeros (the background)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    B, C, H, W = images.shape
    m = max_shift
    padded = torch.nn.functional.pad(images, (m, m, m, m))  # (B, C, H + 2m, W + 2m)
    offsets = torch.randint(0, 2 * m + 1, (B, 2), generator=generator).tolist()
    return torch.stack([padded[b, :, dy:dy + H, dx:dx + W] for b, (dy, dx) in enumerate(offsets)])


def digit_batch_fn(split: DigitSplit, batch_size: int, max_shift: int = 0) -> Callable:
    """A ``batch_fn(split_name, generator)`` for :func:`llmcourse.train.train`: random (images, labels)
    batches from the training set ("train", shifted by up to ``max_shift`` pixels) or the test set ("val")."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def batch_fn(name: str, generator: torch.Generator):
        x, y = (split.train_x, split.train_y) if name == "train" else (split.test_x, split.test_y)
        i = torch.randint(0, len(y), (batch_size,), generator=generator)
        images = shift_images(x[i], max_shift, generator) if name == "train" else x[i]
        return images, y[i]

    return batch_fn


# ----------------------------------------------------------------------------------------------------
# Captions and a word-level tokenizer
# ----------------------------------------------------------------------------------------------------
def caption(label: int, template: str = "a handwritten {}") -> str:
    """The caption of a digit: ``template`` with the label's number word, e.g. "a handwritten seven"."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"label must be a digit 0..9, got {label}")
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
    return re.sub(r"\ba eight\b", "an eight", template.format(NUMBER_WORDS[int(label)]))  # "an eight"


def make_captions(labels: torch.Tensor, templates: Sequence[str] = TRAIN_TEMPLATES, seed: int = 0) -> list[str]:
    """One caption per label, each with a template drawn at random (fixed by ``seed``)."""
    if not templates:
        raise ValueError("need at least one template")
    generator = torch.Generator().manual_seed(seed)
    choice = torch.randint(0, len(templates), (len(labels),), generator=generator).tolist()
    return [caption(int(y), templates[c]) for y, c in zip(labels.tolist(), choice)]


class WordTokenizer:
    """Whitespace tokenizer over a fixed word list, with special tokens PAD=0, UNK=1, BOS=2, EOS=3 and
    IMAGE=4 (the ``<image>`` placeholder of interleaved sequences). Unknown words map to UNK.

    >>> tok = WordTokenizer.fit(["a handwritten seven"])
    >>> tok.decode(tok.encode("a handwritten seven"))
    'a handwritten seven'
    """

    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<image>")
    PAD, UNK, BOS, EOS, IMAGE = range(5)

    def __init__(self, words: Sequence[str]):
        words = [w for w in words if w not in self.SPECIALS]
        if len(set(words)) != len(words) or any(not w or " " in w for w in words):
            raise ValueError("words must be distinct, non-empty and contain no spaces")
        self.itos = list(self.SPECIALS) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def fit(cls, texts: Sequence[str]) -> WordTokenizer:
        """Vocabulary = the sorted distinct words of ``texts`` (after the special tokens)."""
        return cls(sorted({w for t in texts for w in t.split()} - set(cls.SPECIALS)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(w, self.UNK) for w in text.split()]
        return [self.BOS] * bos + ids + [self.EOS] * eos

    def decode(self, ids, skip_special: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids out of range 0..{self.vocab_size - 1}: {bad[:5]}")
        return " ".join(self.itos[i] for i in ids if not (skip_special and i < len(self.SPECIALS)))

    def batch_encode(self, texts: Sequence[str], max_len: int | None = None, eos: bool = True) -> torch.Tensor:
        """Right-padded ids (B, T) with PAD=0; each text ends with EOS when ``eos`` (CLIP pools there).
        Texts longer than ``max_len`` raise ``ValueError`` rather than being cut silently."""
        rows = [self.encode(t, eos=eos) for t in texts]
        T = max(len(r) for r in rows) if max_len is None else max_len
        long = [t for t, r in zip(texts, rows) if len(r) > T]
        if long:
            raise ValueError(f"{len(long)} text(s) longer than max_len={T} tokens, e.g. {long[0]!r}")
        return torch.tensor([r + [self.PAD] * (T - len(r)) for r in rows], dtype=torch.long)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def caption_tokenizer(extra_words: Sequence[str] = ()) -> WordTokenizer:
    """The tokenizer of the digit captions: every word of :data:`TRAIN_TEMPLATES`, the number words,
    the words of the interleaved task ("this is the digit ...") and ``extra_words``."""
    texts = [caption(d, t) for d in range(10) for t in TRAIN_TEMPLATES] + [". this is the digit", *extra_words]
    return WordTokenizer.fit(texts)


# ----------------------------------------------------------------------------------------------------
# Interleaved image-text sequences (Flamingo demo)
# ----------------------------------------------------------------------------------------------------
class Interleaved(NamedTuple):
    """``tokens`` (B, T) with ``<image>`` placeholders, the ``images`` (B, M, ...) they stand for (in
    order), their ``labels`` (B, M), and ``digit_positions`` (B, M): where each number word sits."""

    tokens: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    digit_positions: torch.Tensor


def make_interleaved(images: torch.Tensor, labels: torch.Tensor, n: int, tokenizer: WordTokenizer,
                     images_per_sequence: int = 2, generator: torch.Generator | None = None) -> Interleaved:
    """``n`` sequences ``<bos> <image> this is the digit seven . <image> this is the digit two .`` from random
    images of the pool ``images`` (N, ...) with their ``labels`` (N,). The pool may hold the images
    (N, 1, 8, 8) or features a frozen encoder computed once (N, patches, width); ``Interleaved.images`` is
    then (B, M, ...) of the same kind. A text-only model can at best guess each number word (1 in 10);
    seeing the image it can be exact."""
    M = images_per_sequence
    if n < 1 or M < 1:
        raise ValueError(f"n ({n}) and images_per_sequence ({M}) must be >= 1")
    if len(images) != len(labels):
        raise ValueError(f"need one label per image, got {len(images)} images and {len(labels)} labels")
    pick = torch.randint(0, len(labels), (n, M), generator=generator)  # (B, M)
    chunk = tokenizer.encode("<image> this is the digit")  # 5 tokens; the number word follows
    rows, positions = [], []
    for b in range(n):
        row, pos = [tokenizer.BOS], []
        for m in range(M):
            row += chunk
            pos.append(len(row))
            row += tokenizer.encode(f"{NUMBER_WORDS[int(labels[pick[b, m]])]} .")
        rows.append(row)
        positions.append(pos)
    return Interleaved(torch.tensor(rows), images[pick], labels[pick], torch.tensor(positions))
