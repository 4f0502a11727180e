"""How fast the concept browser is built and opens at 10,000 sentences x 1,000 concepts.

Synthetic data (a 5,000-word vocabulary, 25 tokens per sentence, 4 methods
with 1,000 concepts each); the page is opened from disk in headless
chromium (Debian's, via selenium) and timed until its script has rendered
the first page and the concept list; then a token click, a concept search
and a sentence search are timed.

    python benchmarks/bench_browser.py --out benchmarks/results/bench_browser.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from clvqlearn import LayerPairs
from clvqlearn.report.browser import write_concept_browser


def synthetic(n_docs: int, n_concepts: int, n_methods: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)], dtype=object)
    tokens = vocab[rng.zipf(1.3, size=n_docs * length) % vocab.size]
    offsets = np.arange(0, n_docs * length + 1, length)
    pairs = LayerPairs(low=np.zeros((tokens.size, 1), np.float32), high=np.zeros((tokens.size, 1), np.float32),
                       offsets=offsets, tokens=tokens)
    methods = {f"method {m}": rng.integers(0, n_concepts, size=tokens.size) for m in range(n_methods)}
    salient = offsets[:-1] + rng.integers(0, length, size=n_docs)
    labels = rng.integers(0, 2, size=n_docs)
    return pairs, methods, salient, labels


def open_in_chromium(path: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        t = time.perf_counter()
        driver.get(path.as_uri())
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        load = time.perf_counter() - t
        nav = driver.execute_script("const e = performance.getEntriesByType('navigation')[0];"
                                    "return [e.domContentLoadedEventEnd, e.loadEventEnd];")
        t = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, ".tok").click()
        click = time.perf_counter() - t
        t = time.perf_counter()
        driver.find_element(By.ID, "concept-search").send_keys("w1")
        search = time.perf_counter() - t
        t = time.perf_counter()
        driver.find_element(By.ID, "sentence-search").send_keys("w42 ")
        WebDriverWait(driver, 60).until(lambda d: "w42" in d.find_element(By.ID, "docs").text)
        sentence_search = time.perf_counter() - t
        return {"load_seconds": round(load, 2), "dom_content_loaded_ms": round(nav[0]), "load_event_ms": round(nav[1]),
                "click_seconds": round(click, 3), "concept_search_seconds": round(search, 3),
                "sentence_search_seconds_incl_150ms_debounce": round(sentence_search, 3)}
    finally:
        driver.quit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-docs", type=int, default=10_000)
    parser.add_argument("--n-concepts", type=int, default=1_000)
    parser.add_argument("--n-methods", type=int, default=4)
    parser.add_argument("--length", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    pairs, methods, salient, labels = synthetic(args.n_docs, args.n_concepts, args.n_methods, args.length)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "browser.html"
        t = time.perf_counter()
        write_concept_browser(path, methods, pairs, salient_rows=salient, labels=labels, predictions=labels,
                              label_names=["neg", "pos"])
        build = time.perf_counter() - t
        result = {"n_docs": args.n_docs, "n_tokens": pairs.n_tokens, "n_concepts": args.n_concepts,
                  "n_methods": args.n_methods, "build_seconds": round(build, 1),
                  "html_megabytes": round(path.stat().st_size / 1e6, 1),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"}
        if shutil.which("chromium") and shutil.which("chromedriver"):
            result.update(open_in_chromium(path))
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
