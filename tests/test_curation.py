"""Tests for llmcourse.curation: records, hashes, caption checks, annotation aggregation, and that the
pipeline removes exactly the injected problems it is designed for."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from llmcourse import curation, digits


@pytest.fixture(scope="module")
def data():
    split = digits.load_digits_split()
    crawl = curation.make_web_crawl(split.train_x[300:], split.train_y[300:], split.test_x, split.test_y,
                                    n=300, seed=1)
    return split, crawl


def test_records_are_json_and_valid(data):
    _, crawl = data
    assert len(crawl) == 300 and len({r["id"] for r in crawl}) == 300
    for record in crawl[:20]:
        public = {k: v for k, v in record.items() if k != "_truth"}
        assert json.loads(json.dumps(public)) == public
        assert curation.validate_record(public) == []
    problems = Counter(r["_truth"]["problem"] for r in crawl)
    assert problems["test copy"] == 12 and problems["clean"] > 100 and len(problems) == 8


def test_crawl_is_deterministic_and_checks_inputs(data):
    split, crawl = data
    again = curation.make_web_crawl(split.train_x[300:], split.train_y[300:], split.test_x, split.test_y,
                                    n=300, seed=1)
    assert again == crawl
    with pytest.raises(ValueError, match="both test_images and test_labels"):
        curation.make_web_crawl(split.train_x, split.train_y, split.test_x)
    with pytest.raises(ValueError, match="distinct source images"):
        curation.make_web_crawl(split.train_x[:20], split.train_y[:20], n=100)


def test_validate_record_finds_problems():
    pixels = [0] * 63 + [16]
    record = {"id": "x", "source_url": "u", "license": "cc0-1.0", "width": 8, "height": 8,
              "sha256": curation.pixel_sha256(pixels), "caption": "a handwritten one", "pixels": pixels}
    assert curation.validate_record(record) == []
    assert curation.validate_record({**record, "pixels": [1] + pixels[1:]}) == ["sha256 does not match the pixels"]
    assert curation.validate_record({**record, "width": "8"}) == ["width should be int"]
    assert curation.validate_record({k: v for k, v in record.items() if k != "caption"}) == ["missing caption"]
    assert curation.validate_record({**record, "pixels": [17] * 64}) == ["pixels do not match width x height or leave 0..16"]


def test_hashes():
    a = list(range(64))
    assert curation.pixel_sha256(a) == curation.pixel_sha256(list(a)) != curation.pixel_sha256(a[::-1])
    h = curation.average_hash(a)
    assert h == sum(1 << i for i in range(32, 64))  # the brighter half
    assert curation.hamming(h, h) == 0 and curation.hamming(0b1011, 0b0001) == 2
    with pytest.raises(ValueError, match="64 pixels"):
        curation.average_hash([1, 2, 3])


@pytest.mark.parametrize("text,digit,boilerplate,english", [
    ("a handwritten seven", 7, False, True),
    ("an eight written by hand", 8, False, True),
    ("IMG_0412.png", None, True, False),
    ("click to enlarge", None, True, False),  # English, but outside our small caption vocabulary
    ("un sept écrit à la main", None, False, False),
    ("die Ziffer sechs", None, False, False),
    ("the digit one or two", None, False, True),
])
def test_caption_checks(text, digit, boilerplate, english):
    assert curation.caption_digit(text) == digit
    assert curation.is_boilerplate(text) == boilerplate
    assert curation.is_english(text) == english


def test_majority_vote_and_annotations(data):
    rows = [{"record_id": "r1", "digit": 3}, {"record_id": "r1", "digit": 3}, {"record_id": "r1", "digit": 5},
            {"record_id": "r2", "digit": 4}, {"record_id": "r2", "digit": 2}]
    assert curation.majority_vote(rows) == {"r1": (3, 2 / 3), "r2": (2, 0.5)}
    _, crawl = data
    rows = curation.simulate_annotations(crawl[:50], {"good": 0.0, "bad": 1.0}, seed=0)
    assert len(rows) == 100
    good = [r for r in rows if r["annotator"] == "good"]
    bad = [r for r in rows if r["annotator"] == "bad"]
    assert all(r["digit"] == rec["_truth"]["digit"] for r, rec in zip(good, crawl[:50]))
    assert all(r["digit"] != rec["_truth"]["digit"] for r, rec in zip(bad, crawl[:50]))


def test_curate_removes_the_injected_problems(data):
    split, crawl = data
    test_hashes = {curation.pixel_sha256([round(v * 16) for v in x.flatten().tolist()]) for x in split.test_x}

    def oracle(pixels, digit):  # a perfect image-text scorer, to test the other stages in isolation
        return float(digit == next(r["_truth"]["digit"] for r in crawl if r["pixels"] == pixels))

    kept, funnel = curation.curate(crawl, oracle, forbidden_hashes=test_hashes)
    assert [s.name for s in funnel][0] == "valid schema" and funnel[-1].kept == len(kept)
    assert sum(s.removed for s in funnel) == len(crawl) - len(kept)
    survived = Counter(r["_truth"]["problem"] for r in kept)
    for problem in ("boilerplate", "other language", "licence", "test copy", "wrong caption"):
        assert survived.get(problem, 0) == 0, problem
    assert len({r["sha256"] for r in kept}) == len(kept)
    # Every clean record survives, or a copy of it does (when the copy came first, the original goes).
    kept_pixels = torch.tensor([r["pixels"] for r in kept], dtype=torch.float32)
    clean = torch.tensor([r["pixels"] for r in crawl if r["_truth"]["problem"] == "clean"], dtype=torch.float32)
    assert torch.cdist(clean, kept_pixels, p=1).min(dim=1).values.max() <= 24
    # Without the agreement stage, wrong captions get through: the stage has teeth.
    kept_no_scorer, funnel_no_scorer = curation.curate(crawl, None, forbidden_hashes=test_hashes)
    assert len(funnel_no_scorer) == len(funnel) - 1
    assert any(r["_truth"]["problem"] == "wrong caption" for r in kept_no_scorer)
