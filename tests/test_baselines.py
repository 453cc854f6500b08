"""gzip + kNN and the linear classifier (llmcourse.baselines)."""

from __future__ import annotations

import gzip

import pytest
import torch

from llmcourse import baselines as bl


def test_ncd_properties():
    a = "the quick brown fox jumps over the lazy dog " * 3
    b = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 3
    assert bl.ncd(a, a) < 0.2 < bl.ncd(a, b)
    assert bl.compressed_size(a) == len(gzip.compress(a.encode(), compresslevel=9, mtime=0))
    m = bl.ncd_matrix([a, b], [a, b, a + "!"])
    assert m.shape == (2, 3) and m.dtype == torch.float64
    assert m[0, 0] == pytest.approx(bl.ncd(a, a)) and m[1, 0] == pytest.approx(bl.ncd(b, a))


def test_knn_vote_ties_go_to_the_nearest():
    d = torch.tensor([[0.1, 0.2, 0.3, 0.9]])
    assert bl.knn_vote(d, [1, 0, 0, 1], k=1) == [1]
    assert bl.knn_vote(d, [1, 0, 0, 1], k=3) == [0]  # majority
    assert bl.knn_vote(d, [1, 0, 2, 1], k=2) == [1]  # 1-1 tie: the nearest wins, whatever the truth
    with pytest.raises(ValueError, match="k must be"):
        bl.knn_vote(d, [1, 0, 0, 1], k=5)


def test_gzip_knn_classifies_by_vocabulary():
    train = ["socket connect send receive bytes host port", "http request header url server response",
             "decimal fraction rounding precision arithmetic", "integer float rounding digits precision"]
    labels = [0, 0, 1, 1]
    test = ["send bytes to the server port over a socket", "rounding a decimal to a given precision"]
    assert bl.gzip_knn_predict(train, labels, test, k=1) == [0, 1]
    assert bl.accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)


def test_linear_classifier_separates_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.arange(3).repeat(40)
    x = centers[y] + torch.randn(120, 2, generator=g) * 0.5
    clf = bl.train_linear_classifier(x, y, 3, steps=200)
    assert clf.weight.shape == (3, 2) and clf.bias.shape == (3,)
    assert (clf.predict(x) == y).float().mean() > 0.97
    again = bl.train_linear_classifier(x, y, 3, steps=200)
    torch.testing.assert_close(again.weight, clf.weight)
    with pytest.raises(ValueError, match="labels"):
        bl.train_linear_classifier(x, y + 5, 3)
