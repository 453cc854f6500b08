"""Baselines to beat before fine-tuning anything: a parameter-free gzip + k-nearest-neighbours text
classifier, and a linear classifier (logistic regression) on frozen sentence embeddings.

gzip + kNN (Jiang et al. 2023, "'Low-Resource' Text Classification: A Parameter-Free Classification
Method with Compressors", ACL Findings, https://aclanthology.org/2023.findings-acl.426): two texts are
similar when compressing them together costs little more than compressing one of them. The normalised
compression distance (Li et al. 2004, "The similarity metric"; Cilibrasi & Vitanyi 2005) is

    NCD(x, y) = (C(xy) - min(C(x), C(y))) / max(C(x), C(y)),   C = length after gzip,

and a test text gets the majority label of its k nearest training texts. Ties are broken by the nearest
neighbour: the paper's code broke them in favour of the right label, which overstated its accuracy
(K. Schutte, "Bad numbers in the gzip-classification paper", 2023).

Taught in ``modules/02_fine_tuning/06_data_preparation.py``. Shape legend: N examples, D features, K classes.
"""
from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "compressed_size",
    "ncd",
    "ncd_matrix",
    "knn_vote",
    "gzip_knn_predict",
    "accuracy",
    "LinearClassifier",
    "train_linear_classifier",
]


def compressed_size(text: str) -> int:
    """C(x): bytes of ``text`` (UTF-8) after gzip at level 9 (the header's fixed 18 bytes included;
    they cancel in the NCD)."""
    return len(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def ncd(x: str, y: str) -> float:
    """Normalised compression distance, about 0 for near-identical texts and about 1 for unrelated ones."""
    cx, cy = compressed_size(x), compressed_size(y)
    cxy = compressed_size(x + " " + y)
    return (cxy - min(cx, cy)) / max(cx, cy)


def ncd_matrix(queries: Sequence[str], references: Sequence[str]) -> torch.Tensor:
    """NCD of every query to every reference: a float64 tensor (len(queries), len(references)). Each
    text is compressed alone once; each pair once (this is the expensive part: N_q * N_r compressions)."""
    if not queries or not references:
        raise ValueError("queries and references must be non-empty")
    cq = [compressed_size(q) for q in queries]
    cr = [compressed_size(r) for r in references]
    rows = [[(compressed_size(q + " " + r) - min(cq[i], cr[j])) / max(cq[i], cr[j]) for j, r in enumerate(references)]
            for i, q in enumerate(queries)]
    return torch.tensor(rows, dtype=torch.float64)  # (N_q, N_r)


def knn_vote(distances: torch.Tensor, labels: Sequence[int], k: int) -> list[int]:
    """Majority label among the ``k`` nearest references of each query (distances (N_q, N_r)); a tie goes
    to the tied label whose nearest member is closest (never to the right answer by construction)."""
    if not 1 <= k <= distances.shape[1]:
        raise ValueError(f"k must be in 1..{distances.shape[1]}, got {k}")
    if len(labels) != distances.shape[1]:
        raise ValueError(f"{len(labels)} labels for {distances.shape[1]} references")
    order = distances.argsort(dim=1, stable=True)[:, :k]  # (N_q, k), nearest first
    preds = []
    for row in order.tolist():
        votes = Counter(labels[j] for j in row)
        best = max(votes.values())
        tied = {lab for lab, v in votes.items() if v == best}
        preds.append(next(labels[j] for j in row if labels[j] in tied))  # nearest among the tied labels
    return preds


def gzip_knn_predict(train_texts: Sequence[str], train_labels: Sequence[int], test_texts: Sequence[str],
                     k: int = 3) -> list[int]:
    """Classify each test text by a ``k``-nearest-neighbour vote under the gzip NCD. No training, no
    parameters; cost grows with len(train) * len(test)."""
    return knn_vote(ncd_matrix(test_texts, train_texts), train_labels, k)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of equal entries."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"need equally long non-empty sequences, got {len(predictions)} and {len(labels)}")
    return sum(int(p) == int(t) for p, t in zip(predictions, labels)) / len(labels)


class LinearClassifier(NamedTuple):
    """Logistic-regression weights: ``logits = x @ weight.T + bias`` with weight (K, D), bias (K,)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices (N,) for features x (N, D)."""
        return (x.float() @ self.weight.T + self.bias).argmax(dim=-1)


def train_linear_classifier(x: torch.Tensor, y: Sequence[int] | torch.Tensor, n_classes: int,
                            weight_decay: float = 1e-3, steps: int = 300, lr: float = 0.1,
                            seed: int = 0) -> LinearClassifier:
    """Multinomial logistic regression on fixed features x (N, D) (e.g. frozen sentence embeddings):
    full-batch AdamW on the mean cross-entropy. The "new head on a frozen encoder" of feature extraction;
    deterministic for a given ``seed``."""
    y = torch.as_tensor(y, dtype=torch.long, device=x.device)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x (N, D) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if n_classes < 2 or int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1} with n_classes >= 2")
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(n_classes, x.shape[1], generator=g) * 0.01).to(x.device).requires_grad_()
    bias = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    xf = x.float()
    for _ in range(steps):
        loss = F.cross_entropy(xf @ weight.T + bias, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return LinearClassifier(weight.detach(), bias.detach())
