import json
import os
import shutil
import time

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
