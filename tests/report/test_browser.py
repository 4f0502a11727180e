import json
import os
import re
import shutil

import pytest

from clvqlearn.report.browser import (
    browser_data,
    concept_browser_html,
    write_concept_browser,
)


def _methods(ids):
    return {"CLVQ-VAE": ids, "k-means": (ids + 1) % 5}


def _embedded(page):
    text = re.search(r'<script type="application/json" id="clvq-data">(.*?)</script>', page, re.DOTALL).group(1)
    return json.loads(text.replace("<\\/", "</"))


def test_page_is_self_contained(toy_pairs):
    pairs, ids, salient, labels = toy_pairs
    page = concept_browser_html(_methods(ids), pairs, salient_rows=salient, labels=labels, label_names=["neg", "pos"])
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script src" not in page and "@import" not in page
    data = _embedded(page)
    assert [m["name"] for m in data["methods"]] == ["CLVQ-VAE", "k-means"]
    assert data["methods"][0]["ids"] == ids.tolist() and data["docs"]["salient"] == salient.tolist()
    good = next(c for c in data["methods"][0]["concepts"] if c["id"] == 1)
    assert good["words"][0] == ["good", 3] and good["labels"] == [0, 3]


def test_script_breaking_tokens_are_escaped(toy_pairs):
    pairs, ids, *_ = toy_pairs
    pairs.tokens[1] = "</script><b>"
    page = concept_browser_html({"m": ids}, pairs)
    assert page.count("</script>") == 2  # the JSON block and the code block only
    assert _embedded(page)["docs"]["vocab"].count("</script><b>") == 1


def test_bad_inputs(toy_pairs):
    pairs, ids, salient, _ = toy_pairs
    with pytest.raises(ValueError, match="non-empty dict"):
        browser_data({}, pairs)
    with pytest.raises(ValueError, match="salient_rows"):
        browser_data({"m": ids}, pairs, salient_rows=salient[:2])
    with pytest.raises(ValueError, match="shape"):
        browser_data({"m": ids[:3]}, pairs)


def test_browser_in_headless_chromium(chrome, console_errors, toy_pairs, tmp_path):
    from selenium.webdriver.common.by import By

    pairs, ids, salient, labels = toy_pairs
    path = write_concept_browser(tmp_path / "browser.html", _methods(ids), pairs, salient_rows=salient,
                                 labels=labels, predictions=labels, label_names=["neg", "pos"])
    chrome.get(path.as_uri())
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert console_errors(chrome) == []
    # every document shows both methods; the salient token is outlined
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".doc")) == 6
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".mrow")) == 12
    sal = chrome.find_elements(By.CSS_SELECTOR, '.tok.sal[data-m="0"]')
    assert [s.text for s in sal] == ["good", "great", "bad", "awful", "good", "bad"]
    # click the salient 'bad' of CLVQ-VAE -> card of concept 2
    sal[2].click()
    card = chrome.find_element(By.ID, "card").text
    assert "CLVQ-VAE · concept 2" in card and "3 tokens" in card
    assert "bad 2" in card and "awful 1" in card and "neg" in card
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".tok.sel")) == 3
    # concept list: 4 non-empty concepts; search by word narrows it to the 'good' concept
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".concept-row")) == 4
    special_row = chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="0"]')
    assert "special tokens" in special_row.text
    chrome.find_element(By.ID, "concept-search").send_keys("grea")
    rows = chrome.find_elements(By.CSS_SELECTOR, ".concept-row")
    assert [r.get_attribute("data-c") for r in rows] == ["1"]
    rows[0].click()
    assert "concept 1" in chrome.find_element(By.ID, "card").text
    # sort by id on the other method
    chrome.find_element(By.ID, "concept-search").clear()
    chrome.find_element(By.CSS_SELECTOR, '#concept-sort option[value="id"]').click()
    rows = chrome.find_elements(By.CSS_SELECTOR, ".concept-row")
    assert [r.get_attribute("data-c") for r in rows] == ["0", "1", "2", "3"]
    # sentence search, then the concept filter from the card
    chrome.find_element(By.ID, "sentence-search").send_keys("awful")
    chrome.implicitly_wait(0)
    _wait(chrome, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".doc")) == 1)
    chrome.find_element(By.ID, "sentence-search").clear()
    chrome.find_element(By.ID, "sentence-search").send_keys(" ")
    _wait(chrome, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".doc")) == 6)
    chrome.find_element(By.CSS_SELECTOR, '.tok[data-m="0"][data-c="1"]').click()
    chrome.find_element(By.ID, "filter-concept").click()
    assert [d.get_attribute("data-doc") for d in chrome.find_elements(By.CSS_SELECTOR, ".doc")] == ["0", "1", "4"]
    # hide a method
    chrome.find_element(By.CSS_SELECTOR, '.method-box[data-m="1"]').click()
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".mrow")) == 3
    assert console_errors(chrome) == []
    shot = tmp_path / "browser.png"
    assert chrome.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("CLVQLEARN_KEEP_SCREENSHOTS"):  # to look at it while developing
        shutil.copy(shot, os.environ["CLVQLEARN_KEEP_SCREENSHOTS"])


def _wait(driver, condition, timeout=5):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(condition)


#: Strings that broke the page or ran code when pasted into it as HTML.
HOSTILE = ["<!-- <script>", "</script><script>window.__pwned=1</script>", "<img src=x onerror=window.__pwned=1>",
           "a&amp;b", "__DATA__", "line\u2028sep"]


def _hostile_pairs(toy_pairs):
    pairs, ids, salient, labels = toy_pairs
    for row, text in zip((1, 6, 11, 16, 20, 26), HOSTILE):  # one word token in each document
        pairs.tokens[row] = text
    return pairs, ids, salient, labels


def test_hostile_strings_stay_data(toy_pairs):
    pairs, ids, salient, labels = _hostile_pairs(toy_pairs)
    page = concept_browser_html({HOSTILE[1]: ids}, pairs, label_names=HOSTILE[:2], labels=labels,
                                salient_rows=salient, title=HOSTILE[0] + HOSTILE[4])
    block = re.search(r'<script type="application/json" id="clvq-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert not re.search("[<>&\u2028\u2029]", block)  # nothing in the data can end or confuse the script block
    data = json.loads(block)
    assert set(HOSTILE) <= set(data["docs"]["vocab"]) and data["methods"][0]["name"] == HOSTILE[1]
    assert data["title"] == HOSTILE[0] + HOSTILE[4] and data["label_names"] == HOSTILE[:2]
    assert page.count("&lt;!-- &lt;script&gt;__DATA__") == 2  # <title> and <h1>, escaped and not filled in
    with pytest.raises(TypeError, match="title must be a string"):
        concept_browser_html({"m": ids}, pairs, title=["not", "text"])


def test_hostile_strings_in_headless_chromium(chrome, console_errors, toy_pairs, tmp_path):
    from selenium.webdriver.common.by import By

    pairs, ids, salient, labels = _hostile_pairs(toy_pairs)
    path = write_concept_browser(tmp_path / "browser.html", {HOSTILE[2]: ids, HOSTILE[0]: (ids + 1) % 5}, pairs,
                                 salient_rows=salient, labels=labels, predictions=labels,
                                 label_names=HOSTILE[1:3], title=HOSTILE[0])
    chrome.get(path.as_uri())
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert chrome.execute_script("return window.__pwned") is None
    assert console_errors(chrome) == []
    assert chrome.title == HOSTILE[0] and chrome.find_element(By.TAG_NAME, "h1").text == HOSTILE[0]
    assert len(chrome.find_elements(By.CSS_SELECTOR, ".doc")) == 6
    assert not chrome.find_elements(By.CSS_SELECTOR, "#left img, #right img, #left script, #right script")
    tokens = [t.get_attribute("textContent") for t in chrome.find_elements(By.CSS_SELECTOR, '.tok[data-m="0"]')]
    assert all(text in tokens for text in HOSTILE)
    names = [m.text for m in chrome.find_elements(By.CSS_SELECTOR, ".mname")]
    assert names[:2] == [HOSTILE[2], HOSTILE[0]]
    assert f"label: {HOSTILE[2]}" in chrome.find_element(By.CSS_SELECTOR, ".dochead").text
    # the card of the concept that holds the hostile words: words, example sentences, label names as text
    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="3"]').click()
    card = chrome.find_element(By.ID, "card")
    assert HOSTILE[2] + " · concept 3" in card.text
    assert all(text in card.get_attribute("textContent") for text in HOSTILE[:3])  # words, label names
    assert not card.find_elements(By.CSS_SELECTOR, "img, script")
    assert chrome.execute_script("return window.__pwned") is None
    assert console_errors(chrome) == []


# ------------------------------------------------------------------ per-concept annotations on the cards
def _annotations():
    """Concepts 1-3 of the toy ids (0 has none); a hostile label, NaN, a bool, an int, an empty concept's row."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"best_label": ["pos:ADJ", HOSTILE[2], None, "never shown"],
                         "purity": [0.923456, 0.5, np.nan, 1.0],
                         "score": [1.0, 0.0, -2.5, 3.0],
                         "aligned": [True, False, False, True],
                         HOSTILE[0]: [7, 8, 9, 10]},
                        index=pd.Index([1, 2, 3, 99], name="concept"))


def test_annotations_are_embedded_per_concept(toy_pairs):
    pairs, ids, *_ = toy_pairs
    data = _embedded(concept_browser_html(_methods(ids), pairs, annotations={"CLVQ-VAE": _annotations()}))
    vq, km = data["methods"]
    assert vq["ann"] == {"columns": ["best_label", "purity", "score", "aligned", HOSTILE[0]],
                         "types": ["text", "float", "float", "bool", "int"]}
    cards = {c["id"]: c for c in vq["concepts"]}
    assert "ann" not in cards[0] and 99 not in cards  # no row; a row of a concept without tokens is dropped
    assert cards[1]["ann"] == ["pos:ADJ", 0.923456, 1.0, True, 7]
    assert cards[2]["ann"] == [HOSTILE[2], 0.5, 0.0, False, 8]
    assert cards[3]["ann"] == [None, None, -2.5, False, 9]  # None and NaN become null (JSON has no NaN)
    assert "ann" not in km and all("ann" not in c for c in km["concepts"])


def test_bad_annotations(toy_pairs):
    import pandas as pd

    pairs, ids, *_ = toy_pairs
    frame = _annotations()
    with pytest.raises(ValueError, match="not shown: \\['kmeans'\\]"):
        browser_data(_methods(ids), pairs, annotations={"kmeans": frame})
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        browser_data(_methods(ids), pairs, annotations={"k-means": frame.to_dict()})
    with pytest.raises(TypeError, match="must be a dict"):
        browser_data(_methods(ids), pairs, annotations=[frame])
    for index in (["a", "b", "c", "d"], [1, 1, 2, 3], [-1, 1, 2, 3]):
        with pytest.raises(ValueError, match="unique non-negative integer concept ids"):
            browser_data(_methods(ids), pairs, annotations={"k-means": frame.set_axis(pd.Index(index))})


def test_annotations_on_the_card_in_headless_chromium(chrome, console_errors, toy_pairs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    pairs, ids, salient, labels = toy_pairs
    path = write_concept_browser(tmp_path / "browser.html", _methods(ids), pairs, salient_rows=salient,
                                 labels=labels, label_names=["neg", "pos"],
                                 annotations={"CLVQ-VAE": _annotations()})
    chrome.get(path.as_uri())
    assert chrome.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"

    def card_rows():
        rows = chrome.find_elements(By.CSS_SELECTOR, "#card table.ann tr")
        return {r.find_element(By.TAG_NAME, "th").get_attribute("textContent"):
                r.find_element(By.TAG_NAME, "td").get_attribute("textContent") for r in rows}

    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="1"]').click()
    assert card_rows() == {"best_label": "pos:ADJ", "purity": "0.923", "score": "1.000", "aligned": "yes",
                           HOSTILE[0]: "7"}
    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="2"]').click()
    assert card_rows() == {"best_label": HOSTILE[2], "purity": "0.500", "score": "0.000", "aligned": "no",
                           HOSTILE[0]: "8"}
    assert not chrome.find_elements(By.CSS_SELECTOR, "#card img, #card script")
    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="3"]').click()
    assert card_rows() == {"score": "-2.500", "aligned": "no", HOSTILE[0]: "9"}  # no label, NaN purity: left out
    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="0"]').click()
    assert card_rows() == {} and "concept 0" in chrome.find_element(By.ID, "card").text
    # the numeric columns sort the list (concepts without a value last); text cells match the search
    sort = Select(chrome.find_element(By.ID, "concept-sort"))
    assert [o.text for o in sort.options] == ["by size", "by salient count", "by id", "by top word", "by purity",
                                              "by score", "by " + HOSTILE[0]]
    sort.select_by_visible_text("by purity")
    assert [r.get_attribute("data-c") for r in chrome.find_elements(By.CSS_SELECTOR, ".concept-row")] == \
        ["1", "2", "0", "3"]
    chrome.find_element(By.ID, "concept-search").send_keys("pos:ad")
    assert [r.get_attribute("data-c") for r in chrome.find_elements(By.CSS_SELECTOR, ".concept-row")] == ["1"]
    # the other method has no annotations: its list offers the fixed sorts only, its cards no table
    chrome.find_element(By.ID, "concept-search").clear()
    Select(chrome.find_element(By.ID, "list-method")).select_by_index(1)
    assert [o.text for o in sort.options] == ["by size", "by salient count", "by id", "by top word"]
    assert sort.first_selected_option.text == "by size"
    chrome.find_element(By.CSS_SELECTOR, '.concept-row[data-c="2"]').click()
    assert "k-means · concept 2" in chrome.find_element(By.ID, "card").text and card_rows() == {}
    assert chrome.execute_script("return window.__pwned") is None
    assert console_errors(chrome) == []
