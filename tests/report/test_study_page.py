import json
import os
import shutil
import time

import pytest

from clvqlearn.evaluation.study import score_study
from clvqlearn.report.study import make_study

LABELS = ["negative", "positive"]


def _study(n=4):
    preds = [i % 2 for i in range(n)]
    words = [{"kind": "words", "data": ["good", "great"] if p else ["bad", "awful"]} for p in preds]
    sents = [{"kind": "sentences", "data": ["[CLS] a [[dull]] film", "so [[slow]]"]} for _ in preds]
    return make_study([f"s{i}" for i in range(n)], preds, {"clvq": words, "sae": sents}, label_names=LABELS, seed=7)


def _wait_file(folder, suffix, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        done = [p for p in folder.iterdir() if p.name.endswith(suffix) and p.stat().st_size > 0]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {suffix} download in {folder}")


def test_click_through_reload_export_and_score(chrome, console_errors, download_dir, tmp_path):
    from selenium.webdriver.common.by import By

    study = _study()
    page = study.write_html(tmp_path / "study.html")
    chrome.get(page.as_uri())
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert console_errors(chrome) == []
    chrome.find_element(By.ID, "annotator").send_keys("tester 1")

    def answer_current():
        head = chrome.find_element(By.ID, "item-head").text.replace("Item ", "")
        key = study.key[head]
        # the annotator answers the model's prediction for 'clvq' items, 'positive' otherwise
        choice = key["prediction"] if key["method"] == "clvq" else "positive"
        chrome.find_element(By.CSS_SELECTOR, f'.answer[data-label="{choice}"]').click()
        return head

    answered = [answer_current() for _ in range(3)]
    assert "3 answered" in chrome.find_element(By.ID, "progress").text
    chrome.refresh()  # mid-study reload: nothing is lost
    from selenium.webdriver.support.ui import WebDriverWait

    # wait for the reloaded page's script (a loaded 2-core machine can be slow to run it)
    WebDriverWait(chrome, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
        and "3 answered" in d.find_element(By.ID, "progress").text)
    assert chrome.find_element(By.ID, "progress").text.startswith("Item 4 of 8 · 3 answered")
    assert chrome.find_element(By.ID, "annotator").get_attribute("value") == "tester 1"
    chrome.find_element(By.ID, "prev").click()
    chosen = chrome.find_elements(By.CSS_SELECTOR, ".answer.chosen")
    assert len(chosen) == 1
    chrome.find_element(By.ID, "next").click()
    while len(answered) < 8:
        answered.append(answer_current())
    assert len(set(answered)) == 8 and chrome.find_element(By.ID, "done").is_displayed()
    chrome.find_element(By.ID, "prev").click()
    assert console_errors(chrome) == []
    shot = tmp_path / "study.png"
    assert chrome.save_screenshot(str(shot))
    if os.environ.get("CLVQLEARN_KEEP_SCREENSHOTS"):
        shutil.copy(shot, os.environ["CLVQLEARN_KEEP_SCREENSHOTS"])

    exported = json.loads(chrome.find_element(By.ID, "export-text").get_attribute("value"))
    assert exported["annotator"] == "tester 1" and len(exported["answers"]) == 8
    chrome.find_element(By.ID, "export-json").click()
    json_file = _wait_file(download_dir, ".json")
    chrome.find_element(By.ID, "export-csv").click()
    csv_file = _wait_file(download_dir, ".csv")
    assert json.loads(json_file.read_text())["answers"] == exported["answers"]
    key_file = study.write_key(tmp_path / "key.json")
    for source in (json_file, csv_file):
        score = score_study(key_file, source)
        assert score.per_method.loc["clvq", "accuracy"] == 1.0
        assert score.per_method.loc["sae", "accuracy"] == 0.5
        assert score.per_method["n_answers"].sum() == 8


def test_other_study_in_the_same_browser_starts_fresh(chrome, tmp_path):
    from selenium.webdriver.common.by import By

    first, second = _study(), make_study(["x", "y"], [0, 1], {"m": [{"kind": "words", "data": ["a"]}] * 2},
                                         label_names=LABELS, seed=1)
    chrome.get(first.write_html(tmp_path / "a.html").as_uri())
    chrome.find_element(By.CSS_SELECTOR, '.answer[data-label="negative"]').click()
    chrome.get(second.write_html(tmp_path / "b.html").as_uri())
    assert "0 answered" in chrome.find_element(By.ID, "progress").text


#: Strings that broke the page or ran code when pasted into it as HTML.
HOSTILE = ["<!-- <script>", "</script><script>window.__pwned=1</script>", "<img src=x onerror=window.__pwned=1>",
           "a&amp;b", "__DATA__", "line\u2028sep"]


def _hostile_study():
    words = [{"kind": "words", "data": HOSTILE}, {"kind": "words", "data": ["plain"]}]
    sents = [{"kind": "sentences", "data": [f"x [[{h}]] y" for h in HOSTILE]}] * 2
    return make_study([HOSTILE[0], HOSTILE[1]], [0, 1], {"w": words, "s": sents}, label_names=[HOSTILE[2], "ok"],
                      seed=0, show_sentence=True, title=HOSTILE[0] + HOSTILE[4],
                      instructions=HOSTILE[2] + " **bold** " + HOSTILE[0])


def test_hostile_strings_stay_data():
    import re

    page = _hostile_study().html()
    block = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert not re.search("[<>&\u2028\u2029]", block)  # nothing in the data can end or confuse the script block
    data = json.loads(block)
    assert len(data["items"]) == 4 and data["instructions"].startswith(HOSTILE[2])
    assert page.count("&lt;!-- &lt;script&gt;__DATA__") == 2  # <title> and <h1>, escaped and not filled in
    with pytest.raises(TypeError, match="instructions must be a string"):
        make_study(["s"], [0], {"m": [{"kind": "words", "data": ["a"]}]}, label_names=LABELS, instructions=None)


def test_hostile_strings_in_headless_chromium(chrome, console_errors, tmp_path):
    from selenium.webdriver.common.by import By

    study = _hostile_study()
    chrome.get(study.write_html(tmp_path / "study.html").as_uri())
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert chrome.execute_script("return window.__pwned") is None
    assert console_errors(chrome) == []
    assert chrome.title == HOSTILE[0] + HOSTILE[4]
    instructions = chrome.find_element(By.ID, "instructions")
    assert instructions.text == HOSTILE[2] + " bold " + HOSTILE[0]
    assert [b.text for b in instructions.find_elements(By.TAG_NAME, "b")] == ["bold"]
    assert chrome.find_element(By.ID, "progress").text.startswith("Item 1 of 4")
    shown = ""
    for _ in range(4):  # every item shows its strings as text; answering moves on
        assert not chrome.find_elements(By.CSS_SELECTOR, "main img, main script")
        shown += chrome.find_element(By.ID, "concept").get_attribute("textContent")
        chrome.find_element(By.CSS_SELECTOR, ".answer").click()
    assert all(text in shown for text in HOSTILE) and "Sentence: " + HOSTILE[1] in shown
    assert [b.text for b in chrome.find_elements(By.CSS_SELECTOR, ".answer")] == [HOSTILE[2], "ok"]
    assert chrome.find_element(By.ID, "done").is_displayed()
    assert chrome.execute_script("return window.__pwned") is None
    assert console_errors(chrome) == []


def test_key_with_the_old_html_default_gets_the_text_default():
    from clvqlearn.report.study import _LEGACY_INSTRUCTIONS, DEFAULT_INSTRUCTIONS, Study

    data = _study().to_dict()
    data["instructions"] = _LEGACY_INSTRUCTIONS
    assert Study.from_dict(data).instructions == DEFAULT_INSTRUCTIONS
    assert "<b>" not in DEFAULT_INSTRUCTIONS and "**concept**" in DEFAULT_INSTRUCTIONS


def test_instructions_are_text_not_html(chrome, tmp_path):
    from selenium.webdriver.common.by import By

    study = make_study(["s0", "s1"], [0, 1], {"m": [{"kind": "words", "data": ["a"]}] * 2}, label_names=LABELS,
                       instructions=f"Read this.\n{HOSTILE[2]}")
    chrome.get(study.write_html(tmp_path / "study.html").as_uri())
    instructions = chrome.find_element(By.ID, "instructions")
    assert instructions.text == f"Read this.\n{HOSTILE[2]}"  # the line break kept, the tag shown as text
    assert not instructions.find_elements(By.TAG_NAME, "img")
    assert chrome.execute_script("return window.__pwned") is None


@pytest.mark.parametrize("concepts, match", [
    ([{"m": {"kind": "words", "data": ["a"]}}], "concepts must be a non-empty dict"),
    ({"m": [["good", "great"]]}, r"concepts\['m'\]\[0\] must be \{\"kind\""),
    ({"m": [{"kind": "words", "data": "good great"}]}, "must be a list of strings"),
])
def test_concepts_in_the_wrong_shape(concepts, match):
    with pytest.raises(TypeError, match=match):
        make_study(["s"], [0], concepts, label_names=LABELS)
