"""Data preparation (llmcourse.data_prep): tasks, templates, augmentation, deduplication, filters, noise."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from llmcourse import data_prep as dp


def test_addition_exact_distinct_and_excluding():
    test = dp.make_addition(50, digits=2, seed=1)
    train = dp.make_addition(300, digits=2, seed=2, exclude=test)
    for ex in test + train:
        a, b = ex.prompt[:-1].split("+")
        assert ex.prompt.endswith("=") and int(ex.completion) == int(a) + int(b)
        assert 0 <= int(a) < 100 and 0 <= int(b) < 100
    assert len({e.prompt for e in train}) == 300
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert dp.make_addition(20, seed=3) == dp.make_addition(20, seed=3)
    assert dp.make_addition(20, seed=3) != dp.make_addition(20, seed=4)
    with pytest.raises(ValueError, match="distinct"):
        dp.make_addition(101, digits=1)


def test_extraction_json_matches_sentence():
    examples = dp.make_extraction(200, seed=0)
    assert len({e.prompt for e in examples}) == 200
    for ex in examples:
        fields = json.loads(ex.completion)
        assert list(fields) == ["name", "qty", "item"]  # fixed key order: one right answer per sentence
        assert isinstance(fields["qty"], int) and 2 <= fields["qty"] <= 99
        words = ex.prompt.replace(":", "").split()
        assert fields["name"] in words and fields["item"] in words and str(fields["qty"]) in words
        assert ex.completion == json.dumps(fields, separators=(",", ":"))  # compact: no spaces
        assert len(ex.prompt) + len(ex.completion) <= 64
    # every phrasing is used, so the fields move around in the sentence
    shapes = {re.sub(r"\d+", "Q", ex.prompt.replace(json.loads(ex.completion)["name"], "N")
                     .replace(json.loads(ex.completion)["item"], "I")) for ex in examples}
    assert shapes == {"N bought Q I", "N: Q I", "Q I for N", "Send N Q I", "N wants Q I"}
    held_out = dp.make_extraction(50, seed=1)
    fresh = dp.make_extraction(100, seed=0, exclude=held_out)
    assert not {e.prompt for e in fresh} & {e.prompt for e in held_out}
    assert dp.make_extraction(30, seed=5) == dp.make_extraction(30, seed=5)
    with pytest.raises(ValueError, match="positive"):
        dp.make_extraction(0)


def test_split_examples():
    train, test = dp.split_examples(list(range(10)), 3, seed=0)
    assert len(test) == 3 and sorted(train + test) == list(range(10))
    with pytest.raises(ValueError, match="n_test"):
        dp.split_examples([1, 2], 2)


def test_stdlib_topics_balanced_and_deterministic():
    ds = dp.load_stdlib_topics(per_class=40)
    assert len(ds) == 240 and ds.label_names == list(dp.TOPICS)
    assert Counter(ds.labels) == {i: 40 for i in range(6)}
    assert len(set(ds.texts)) == 240
    assert all(len(t) <= 240 and len(t.split()) >= 6 - 1 for t in ds.texts)
    again = dp.load_stdlib_topics(per_class=40)
    assert again.texts == ds.texts and again.labels == ds.labels
    with pytest.raises(ValueError, match="fewer than"):
        dp.load_stdlib_topics(per_class=10_000)


def test_template_format_and_parse():
    t = dp.Template(prefix="Q: ", separator="\nA: ", eos="\n")
    ex = dp.Example("1+1", "2")
    assert t.format(ex) == "Q: 1+1\nA: 2\n"
    assert t.prompt_text("1+1") + t.completion_text("2") == t.format(ex)
    assert t.parse("2\nQ: 3+4") == "2"
    assert dp.Template(eos="").parse("2\nQ") == "2\nQ"


TEXT = "Return the list of files in the given directory, sorted by name."


def test_synonym_replace():
    out = dp.synonym_replace(TEXT, n=2, rng=random.Random(0))
    changed = [(a, b) for a, b in zip(TEXT.split(), out.split()) if a != b]
    assert len(out.split()) == len(TEXT.split()) and len(changed) == 2
    for before, after in changed:
        core = before.strip(",.").lower()
        assert after.strip(",.").lower() in dp.SYNONYMS[core]
    assert out.split()[0][0].isupper()
    assert dp.synonym_replace("nothing matches here", 3) == "nothing matches here"


def test_random_deletion_and_swap():
    rng = random.Random(0)
    out = dp.random_deletion(TEXT, 0.5, rng)
    words = TEXT.split()
    kept = out.split()
    assert 0 < len(kept) < len(words)
    it = iter(words)
    assert all(w in it for w in kept)  # a subsequence, order kept
    assert dp.random_deletion(TEXT, 0.0) == TEXT
    assert len(dp.random_deletion(TEXT, 1.0).split()) == 1
    swapped = dp.random_swap(TEXT, 1, random.Random(1))
    assert swapped != TEXT and sorted(swapped.split()) == sorted(words)
    assert sum(a != b for a, b in zip(swapped.split(), words)) == 2


def test_typos_and_augment():
    noisy = dp.add_typos(TEXT, 0.3, random.Random(0))
    assert noisy != TEXT and abs(len(noisy) - len(TEXT)) < len(TEXT) // 3
    assert dp.add_typos(TEXT, 0.0) == TEXT
    texts, labels = dp.augment(["a b c d e", "f g h i j"], [0, 1], n_aug=3, seed=0)
    assert len(texts) == 8 and labels == [0, 1, 0, 0, 0, 1, 1, 1]
    assert texts[:2] == ["a b c d e", "f g h i j"]
    with pytest.raises(ValueError, match="ops"):
        dp.augment(["a"], [0], ops=("rotate",))


def test_deduplicate_exact_and_near():
    texts = [
        "Return the number of items in the queue.",
        "return the number of items in the queue",  # exact after normalisation
        "Return the number of items in the queue now.",  # near duplicate
        "Open a connection to the remote host and send a greeting.",
    ]
    res = dp.deduplicate(texts, threshold=0.7)
    assert res.keep == [0, 3]
    assert res.exact == [(1, 0)] and res.near == [(2, 0)]
    assert dp.deduplicate(texts, threshold=1.0).keep == [0, 2, 3]
    assert dp.jaccard(dp.shingles("a b c d"), dp.shingles("a b c d")) == 1.0


def test_quality_filter_reasons():
    texts = ["too short", "A perfectly ordinary sentence about reading files from disk.",
             "{}[]<>|#$%^&*~ x = y; z = {a: b}", "spam " * 20]
    res = dp.quality_filter(texts)
    assert res.keep == [1]
    assert res.reasons == Counter({"too short": 1, "too many symbols": 1, "repetitive": 1})


def test_label_noise_flips_exactly():
    labels = [i % 4 for i in range(100)]
    noisy = dp.add_label_noise(labels, 0.3, 4, seed=0)
    assert sum(a != b for a, b in zip(labels, noisy)) == 30
    assert dp.add_label_noise(labels, 0.0, 4) == labels
    with pytest.raises(ValueError, match="rate"):
        dp.add_label_noise(labels, 1.5, 4)


def test_data_card_sizes():
    """The numbers stated in data/fine_tuning_tasks.md."""
    train, test = dp.make_number_words(n_test=150, seed=0)
    assert len(train) == 850 and len(test) == 150
    assert sorted(int(e.completion) for e in train + test) == list(range(1000))
    assert max(len(e.prompt) for e in train + test) == 27
    assert dp.number_to_words(473) == "four hundred seventy three" and dp.number_to_words(0) == "zero"
    assert len(dp.load_stdlib_topics(per_class=272)) == 6 * 272  # "numbers" has 272 paragraphs
    with pytest.raises(ValueError, match="'numbers' has 272"):
        dp.load_stdlib_topics(per_class=273)
    demo = dp.load_stdlib_topics(per_class=60, max_chars=160)
    assert round(sum(len(t) for t in demo.texts) / len(demo)) == 67
    assert (len(dp.SYNONYMS), sum(len(v) for v in dp.SYNONYMS.values())) == (40, 67)
