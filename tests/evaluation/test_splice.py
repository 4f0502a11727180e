"""The splice: an edit inside the forward pass (clvqlearn.evaluation.splice)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clvqlearn.evaluation import fine_tune_classifier
from clvqlearn.evaluation.projection import (
    project_out,
)
from clvqlearn.evaluation.splice import splice_logits, splice_projection
from clvqlearn.models import hook_site

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from movie_corpus import FAST, LABELS, TEXTS


# ========================================================================== the splice
def _capture_after(module, kind, store):
    """A hook registered AFTER the splice hook: sees what the next computation sees."""
    if kind == "pre":
        def pre(mod, args, kwargs):
            store["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        store["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()
    return module.register_forward_hook(post)


def _hooks(model):
    """Every forward (pre-)hook of every module.  transformers installs its own
    output-capturing hooks on the first ``output_hidden_states`` call, so the
    check is "the same hooks as before", not "no hooks"."""
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, table in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in table}


def _batch(path, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("layer", [0, 2, 4])
@pytest.mark.parametrize("at", ["salient", "all"])
def test_splice_edits_exactly_the_hidden_state_and_leaves_the_model_unchanged(
        which, layer, at, tiny_bert_dir, tiny_llama_dir):
    from transformers import AutoModel

    path = tiny_bert_dir if which == "bert" else tiny_llama_dir
    model = AutoModel.from_pretrained(path).eval()
    ids, mask = _batch(path, ["the cat sat on the mat", "stocks fell sharply", "a film"])
    d = model.config.hidden_size
    rng = np.random.default_rng(layer)
    dirs = [rng.normal(size=(2, d)), rng.normal(size=(1, d)), np.zeros((0, d))]
    positions = np.array([2, 1, -1]) if at == "salient" else None
    with torch.no_grad():
        bare = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    reference = bare.hidden_states[layer].numpy()
    expected = reference.copy()
    for b, D in enumerate(dirs):
        if D.size == 0:
            continue
        if positions is None:
            expected[b] = project_out(reference[b], D)
        else:
            expected[b, positions[b]] = project_out(reference[b, positions[b]], D)
    module, kind = hook_site(model, layer)
    store = {}
    hooks_before = _hooks(model)
    with splice_projection(model, layer, dirs, positions=positions) as info:
        handle = _capture_after(module, kind, store)
        try:
            with torch.no_grad():
                edited = model(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            handle.remove()
    assert info["calls"] == 1
    got = store["h"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # untouched rows are bit-identical, the edited ones changed
    if positions is not None:
        untouched = np.ones(got.shape[:2], dtype=bool)
        untouched[0, 2] = untouched[1, 1] = False
        np.testing.assert_array_equal(got[untouched], reference[untouched])
    assert not np.allclose(got[0], reference[0])
    # the edit propagates: the top layer changed for an edited sequence
    assert not torch.allclose(edited[0], bare.last_hidden_state[0])
    if layer == 4:  # the top layer itself is the edited state (after the final norm for Llama)
        np.testing.assert_allclose(edited.numpy(), expected, atol=1e-5)
    # afterwards: no hook left and the same outputs as before
    assert _hooks(model) == hooks_before
    with torch.no_grad():
        again = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(again, bare.last_hidden_state, rtol=0, atol=0)


def test_splice_hook_is_removed_when_an_exception_is_raised(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    ids, mask = _batch(tiny_bert_dir, ["the cat sat", "stocks fell"])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hooks_before = _hooks(model)
    u = np.ones((1, model.config.hidden_size))
    with pytest.raises(RuntimeError, match="boom"):
        with splice_projection(model, 2, u, positions=[1, 1]):
            raise RuntimeError("boom")
    assert _hooks(model) == hooks_before
    # an error raised by the hook itself inside the forward (bad positions)
    with pytest.raises(ValueError, match="one position per sequence"):
        with splice_projection(model, 2, u, positions=[1, 1, 1]), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert _hooks(model) == hooks_before
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer must be"):
        with splice_projection(model, 5, u):
            pass


def test_splice_logits_match_the_model_and_change_with_the_edit(tiny_bert_dir, tmp_path):
    clf = fine_tune_classifier(TEXTS, LABELS, model=str(tiny_bert_dir), output_dir=tmp_path / "c", **FAST)
    model, tok = clf.load("cpu")
    hooks_before = _hooks(model)
    plain = splice_logits(model, tok, TEXTS, max_length=32, batch_size=5)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(plain), -1).numpy(), clf.predict_proba(TEXTS), atol=1e-5)
    d = model.config.hidden_size
    full = [np.eye(d)] * len(TEXTS)  # remove everything at the top layer, every position
    wiped = splice_logits(model, tok, TEXTS, layer=4, directions=full, max_length=32)
    assert np.allclose(wiped, wiped[0], atol=1e-5)  # every sentence now gets the same logits
    none = [np.zeros((0, d))] * len(TEXTS)
    np.testing.assert_allclose(splice_logits(model, tok, TEXTS, layer=2, directions=none,
                                             positions=np.ones(len(TEXTS), int), max_length=32), plain, atol=1e-5)
    assert _hooks(model) == hooks_before


