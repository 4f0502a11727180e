"""A headless Debian chromium driven by selenium (skips when none is installed).

``chrome``          a selenium WebDriver (headless chromium, 1280x900; skips without
                    chromium + chromedriver, fails then when ``CI`` is set), browser
                    console logs enabled, downloads going to ``download_dir``
``download_dir``    the folder the browser downloads into
``console_errors``  ``console_errors(driver)`` -> SEVERE console messages so far
``toy_pairs``       a small LayerPairs with WordPiece tokens, labels and salient rows
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clvqlearn import LayerPairs


def _find(*names):
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def download_dir(tmp_path):
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def chrome(download_dir):
    binary = os.environ.get("CLVQLEARN_CHROMIUM") or _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    if binary is None or driver_path is None:
        message = ("no chromium + chromedriver found (Debian: apt-get install chromium chromium-driver); "
                   "the browser tests need a real headless browser and never download one")
        if os.environ.get("CI"):  # .ci/run installs them: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False,
                                              # the study page downloads JSON, then CSV: allow both
                                              "profile.default_content_setting_values.automatic_downloads": 1})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console_errors():
    def errors(driver):
        return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]

    return errors


@pytest.fixture
def toy_pairs():
    """Six sentences; 'good'/'great' and 'bad'/'awful' words; WordPiece pieces."""
    docs = [["[CLS]", "a", "good", "film", "[SEP]"], ["[CLS]", "great", "act", "##ing", "[SEP]"],
            ["[CLS]", "a", "bad", "plot", "[SEP]"], ["[CLS]", "awful", "film", "[SEP]"],
            ["[CLS]", "good", "good", "fun", "[SEP]"], ["[CLS]", "bad", "un", "##fun", "##ny", "[SEP]"]]
    tokens = np.array([t for d in docs for t in d], dtype=object)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    rng = np.random.default_rng(0)
    pairs = LayerPairs(low=rng.normal(size=(len(tokens), 2)), high=rng.normal(size=(len(tokens), 2)),
                       offsets=offsets, tokens=tokens)
    concept = {"[CLS]": 0, "[SEP]": 0, "good": 1, "great": 1, "fun": 1, "bad": 2, "awful": 2}
    ids = np.array([concept.get(t, 3) for t in tokens])
    salient = np.array([offsets[i] + (2 if i in (0, 2) else 1) for i in range(len(docs))])
    labels = np.array([1, 1, 0, 0, 1, 0])
    return pairs, ids, salient, labels
