"""Data for the course's small models: an offline text corpus, a character tokenizer, batching, a toy
sequence-to-sequence task and BERT-style masking.

- :func:`load_corpus` returns ~2 MB of English text with a Python flavour: the docstrings of the CPython
  standard library, shipped with the package (``data/stdlib_docs.txt.gz``; see ``data/README.md``), so
  every machine trains on identical text without downloading anything.
- :class:`CharTokenizer` maps characters to ids (as nanoGPT's ``shakespeare_char``).
- :func:`get_batch` samples random windows for next-token prediction (x = tokens, y = tokens shifted by 1).
- :func:`make_sort_task` / :func:`make_reverse_task`: sequence-to-sequence problems with exact answers,
  for the encoder-decoder demo; :func:`exact_match_accuracy` scores them.
- :func:`mask_tokens`: masked-language-model inputs with BERT's 80/10/10 rule (Devlin et al. 2019, 3.1).

Taught in ``modules/01_transformers/04_pretraining.py`` (corpus, tokenizer, batches) and
``03_architectures.py`` (MLM masking, the seq2seq tasks). Shape legend: B batch, T length.
"""
from __future__ import annotations

import ast
import gzip
import re
import sysconfig
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "STDLIB_MODULES",
    "CORPUS_PATH",
    "build_stdlib_corpus",
    "write_corpus",
    "load_corpus",
    "CharTokenizer",
    "Batch",
    "get_batch",
    "TokenDataset",
    "train_val_split",
    "Seq2SeqTask",
    "make_sort_task",
    "make_reverse_task",
    "exact_match_accuracy",
    "MLMBatch",
    "mask_tokens",
]

# ----------------------------------------------------------------------------------------------------
# Corpus: CPython standard-library docstrings
# ----------------------------------------------------------------------------------------------------
CORPUS_PATH = Path(__file__).resolve().parent / "data" / "stdlib_docs.txt.gz"

# Pure-Python standard-library modules and packages, sorted. Left out: test suites, GUI code (tkinter,
# idlelib, turtledemo), generated tables (encodings, pydoc_data), deprecated build tools (distutils,
# lib2to3), and jokes (this, antigravity).
STDLIB_MODULES: tuple[str, ...] = (
    "_collections_abc", "_pydecimal", "_pyio", "abc", "aifc", "argparse", "ast", "asynchat", "asyncio",
    "asyncore", "base64", "bdb", "bisect", "bz2", "cProfile", "calendar", "cgi", "cgitb", "chunk", "cmd",
    "code", "codecs", "codeop", "collections", "colorsys", "compileall", "concurrent", "configparser",
    "contextlib", "contextvars", "copy", "copyreg", "crypt", "csv", "ctypes", "curses", "dataclasses",
    "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "genericpath", "getopt", "getpass", "gettext", "glob",
    "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib", "imghdr", "imp", "importlib",
    "inspect", "io", "ipaddress", "json", "keyword", "linecache", "locale", "logging", "lzma", "mailbox",
    "mailcap", "mimetypes", "modulefinder", "multiprocessing", "netrc", "nntplib", "ntpath", "numbers",
    "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pipes", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "profile", "pstats", "pty", "py_compile",
    "pyclbr", "pydoc", "queue", "quopri", "random", "re", "reprlib", "rlcompleter", "runpy", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "site", "smtpd", "smtplib", "sndhdr",
    "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep", "struct",
    "subprocess", "sunau", "symtable", "sysconfig", "tabnanny", "tarfile", "telnetlib", "tempfile",
    "textwrap", "threading", "timeit", "token", "tokenize", "tomllib", "trace", "traceback", "tracemalloc",
    "tty", "turtle", "types", "typing", "unittest", "urllib", "uu", "uuid", "venv", "warnings", "wave",
    "weakref", "webbrowser", "wsgiref", "xdrlib", "xml", "xmlrpc", "zipapp", "zipfile", "zipimport", "zoneinfo",
)
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__"}


def _source_files(stdlib: Path, name: str) -> list[Path]:
    """The .py files of module or package ``name`` (sorted, test folders skipped); [] if absent."""
    if (stdlib / f"{name}.py").is_file():
        return [stdlib / f"{name}.py"]
    package = stdlib / name
    if not package.is_dir():
        return []
    files = (p for p in package.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(package).parts[:-1]))
    return sorted(files, key=lambda p: p.relative_to(stdlib).as_posix())


_NON_PRINTABLE = re.compile(r"[^\n -~]")  # anything but newline and printable ASCII (space .. tilde)


def _clean(text: str) -> str:
    """Printable ASCII only, tabs expanded, trailing spaces and repeated blank lines removed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")  # e -> e, drop rest
    text = text.expandtabs(4)
    text = _NON_PRINTABLE.sub("", text)
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _docstrings(tree: ast.Module, module: str):
    """Yield (header, docstring) for the module, its classes and functions (not nested in functions)."""
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield f"module {module}", doc

    def visit(body, prefix: str):
        for node in body:
            if isinstance(node, ast.ClassDef):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield f"class {prefix}{node.name}", doc
                yield from visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield f"{prefix}{node.name}({ast.unparse(node.args)})", doc

    yield from visit(tree.body, f"{module}.")


def build_stdlib_corpus(max_chars: int = 3_000_000, stdlib_dir: str | Path | None = None) -> str:
    """Build the course corpus from standard-library docstrings (deterministic).

    For each module of :data:`STDLIB_MODULES` (sorted; packages expanded to their sorted .py files), the
    source is parsed with :mod:`ast` (nothing is imported) and every module, class and function docstring
    is emitted as a header line (``module json``, ``class json.JSONDecoder``, ``json.dumps(obj, *, ...)``)
    followed by the cleaned docstring and a blank line. Exact duplicates are kept once. Stops before
    ``max_chars``. The shipped ``data/stdlib_docs.txt.gz`` is this function's output on CPython 3.11.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    stdlib = Path(stdlib_dir or sysconfig.get_path("stdlib"))
    if not stdlib.is_dir():
        raise ValueError(f"standard library folder not found: {stdlib}")
    seen: set[str] = set()
    parts: list[str] = []
    size = 0
    for name in STDLIB_MODULES:
        for path in _source_files(stdlib, name):
            rel = path.relative_to(stdlib).with_suffix("")
            module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few files in some distributions are templates; skip them
            for header, doc in _docstrings(tree, module):
                doc = _clean(doc)
                if not doc or doc in seen:
                    continue
                seen.add(doc)
                entry = f"{_clean(header)}\n{doc}\n\n"
                if size + len(entry) > max_chars:
                    return "".join(parts)
                parts.append(entry)
                size += len(entry)
    return "".join(parts)


def write_corpus(path: str | Path = CORPUS_PATH, max_chars: int = 3_000_000) -> Path:
    """Rebuild the shipped corpus file (maintainers; gzip with a fixed timestamp, so it is reproducible)."""
    text = build_stdlib_corpus(max_chars=max_chars)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0))
    return path


def load_corpus() -> str:
    """The shipped corpus: ~2 MB of standard-library docstrings (printable ASCII and newlines)."""
    if not CORPUS_PATH.is_file():
        raise FileNotFoundError(f"{CORPUS_PATH} is missing: reinstall llmcourse (make install)")
    return gzip.decompress(CORPUS_PATH.read_bytes()).decode("ascii")


# ----------------------------------------------------------------------------------------------------
# Character tokenizer
# ----------------------------------------------------------------------------------------------------
class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters seen by :meth:`fit`.

    >>> tok = CharTokenizer.fit("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars must be a non-empty sequence of distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """Vocabulary = sorted distinct characters of ``text``."""
        if not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - self.stoi.keys()
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {sorted(unknown)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        """ids: a list or a 1-D tensor of token ids."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids out of range 0..{self.vocab_size - 1}: {bad[:5]}")
        return "".join(self.chars[i] for i in ids)

    def state_dict(self) -> dict:
        """JSON-serialisable state; restore with :meth:`from_state_dict`."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_state_dict(cls, state: dict) -> CharTokenizer:
        if state.get("type") != "char" or "chars" not in state:
            raise ValueError(f"not a CharTokenizer state: keys {sorted(state)}")
        return cls(list(state["chars"]))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------------
# Language-model batches
# ----------------------------------------------------------------------------------------------------
class Batch(NamedTuple):
    """Inputs ``x`` (B, T) and next-token targets ``y`` (B, T), ``y[:, t] = x[:, t + 1]`` in the text."""

    x: torch.Tensor
    y: torch.Tensor


def _as_tokens(data) -> torch.Tensor:
    tokens = torch.as_tensor(data, dtype=torch.long)
    if tokens.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {tuple(tokens.shape)}")
    return tokens


def get_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Batch:
    """Sample ``batch_size`` random windows of ``block_size + 1`` tokens from ``data`` (N,):
    x (B, T) is each window's first T tokens and y (B, T) its last T (the next-token targets)."""
    data = _as_tokens(data)
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size ({block_size}) and batch_size ({batch_size}) must be positive")
    if len(data) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(data)}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T + 1,)
    windows = data[starts[:, None] + offsets]  # (B, T + 1)
    x, y = windows[:, :-1], windows[:, 1:]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return Batch(x, y)


class TokenDataset(torch.utils.data.Dataset):
    """Every window of a token stream as a dataset: item ``i`` is (tokens[i:i+T], tokens[i+1:i+T+1])."""

    def __init__(self, tokens, block_size: int):
        self.tokens = _as_tokens(tokens)
        if block_size < 1 or len(self.tokens) <= block_size:
            raise ValueError(f"need 1 <= block_size < len(tokens); got block_size={block_size}, "
                             f"len(tokens)={len(self.tokens)}")
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.tokens) - self.block_size

    def __getitem__(self, i: int) -> Batch:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        i = i % len(self)
        window = self.tokens[i : i + self.block_size + 1]
        return Batch(window[:-1], window[1:])


def train_val_split(tokens, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a token stream (N,) into contiguous train (first part) and validation (last part) streams.
    Contiguous rather than shuffled: overlapping windows would leak validation text into training."""
    tokens = _as_tokens(tokens)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    if n_val >= len(tokens):
        raise ValueError(f"{len(tokens)} tokens are too few to split with val_fraction={val_fraction}")
    return tokens[:-n_val], tokens[-n_val:]


# ----------------------------------------------------------------------------------------------------
# Toy sequence-to-sequence tasks
# ----------------------------------------------------------------------------------------------------
@dataclass
class Seq2SeqTask:
    """A padded sequence-to-sequence data set. Ids: PAD=0, BOS=1, EOS=2, symbols 3 .. vocab_size - 1.

    ``src`` (N, max_len) the input symbols then PAD; ``tgt_in`` (N, max_len + 1) = BOS + answer, then PAD;
    ``tgt_out`` (N, max_len + 1) = answer + EOS, then PAD (the teacher-forcing targets).
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __len__(self) -> int:
        return self.src.shape[0]

    def __getitem__(self, index) -> Seq2SeqTask:
        """Rows ``index`` (an int, slice or index tensor) as a smaller task."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Seq2SeqTask(self.src[index], self.tgt_in[index], self.tgt_out[index], self.vocab_size,
                           self.pad_id, self.bos_id, self.eos_id)


def _make_task(kind: str, n: int, min_len: int, max_len: int, vocab: int, seed: int) -> Seq2SeqTask:
    if n < 1 or vocab < 1:
        raise ValueError(f"n ({n}) and vocab ({vocab}) must be positive")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    pad, bos, eos, first = 0, 1, 2, 3
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)  # (N,)
    symbols = torch.randint(first, first + vocab, (n, max_len), generator=g)  # (N, max_len)
    src = torch.full((n, max_len), pad, dtype=torch.long)
    tgt_in = torch.full((n, max_len + 1), pad, dtype=torch.long)
    tgt_out = torch.full((n, max_len + 1), pad, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        seq = symbols[i, :L]
        answer = seq.sort().values if kind == "sort" else seq.flip(0)
        src[i, :L] = seq
        tgt_in[i, 0], tgt_in[i, 1 : L + 1] = bos, answer
        tgt_out[i, :L], tgt_out[i, L] = answer, eos
    return Seq2SeqTask(src, tgt_in, tgt_out, vocab_size=first + vocab, pad_id=pad, bos_id=bos, eos_id=eos)


def make_sort_task(n: int, min_len: int = 3, max_len: int = 8, vocab: int = 10, seed: int = 0) -> Seq2SeqTask:
    """``n`` random sequences of ``vocab`` symbols (lengths ``min_len..max_len``); the answer is the
    sorted sequence. Deterministic for a given ``seed``."""
    return _make_task("sort", n, min_len, max_len, vocab, seed)


def make_reverse_task(n: int, min_len: int = 3, max_len: int = 8, vocab: int = 10, seed: int = 0) -> Seq2SeqTask:
    """Like :func:`make_sort_task`, but the answer is the sequence reversed (cross-attention must look
    at the mirrored position: a clean alignment pattern to plot)."""
    return _make_task("reverse", n, min_len, max_len, vocab, seed)


def exact_match_accuracy(pred: torch.Tensor, target: torch.Tensor, pad_id: int = 0) -> float:
    """Fraction of rows where ``pred`` (N, L) equals ``target`` (N, L') on every non-pad target position
    (the EOS included). Shorter predictions are padded with ``pad_id``; tokens of ``pred`` beyond the
    target's padding are ignored."""
    if pred.ndim != 2 or target.ndim != 2 or pred.shape[0] != target.shape[0]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (N, L) with equal N")
    L = target.shape[1]
    if pred.shape[1] < L:
        pred = torch.nn.functional.pad(pred, (0, L - pred.shape[1]), value=pad_id)
    pred = pred[:, :L].to(target.device)
    ok = (pred == target) | (target == pad_id)  # (N, L)
    return ok.all(dim=1).float().mean().item()


# ----------------------------------------------------------------------------------------------------
# Masked language modelling (BERT)
# ----------------------------------------------------------------------------------------------------
class MLMBatch(NamedTuple):
    """``inputs`` (B, T) corrupted ids and ``labels`` (B, T): original ids at selected positions, -100
    elsewhere (ignored by ``cross_entropy``)."""

    inputs: torch.Tensor
    labels: torch.Tensor


def mask_tokens(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    p: float = 0.15,
    generator: torch.Generator | None = None,
    special_ids: Sequence[int] = (),
) -> MLMBatch:
    """BERT's masking (Devlin et al. 2019, section 3.1): select each token with probability ``p``
    (never ``special_ids`` such as PAD/CLS/SEP); of the selected, 80% become ``mask_id``, 10% a random
    token, 10% stay unchanged. The model must predict the original at every selected position."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id ({mask_id}) must be in 0..vocab_size-1 ({vocab_size - 1})")
    device = ids.device

    def rand(shape):  # draw on the generator's device, then move
        gen_device = generator.device if generator is not None else "cpu"
        return torch.rand(shape, generator=generator, device=gen_device).to(device)

    selected = rand(ids.shape) < p  # (B, T)
    for special in special_ids:
        selected &= ids != special
    labels = ids.masked_fill(~selected, -100)
    roll = rand(ids.shape)  # one draw decides mask / random / keep
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    random_ids = (rand(ids.shape) * vocab_size).long().clamp_max(vocab_size - 1)
    inputs = ids.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, random_ids, inputs)
    return MLMBatch(inputs, labels)
