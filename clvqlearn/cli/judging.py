"""Evaluation axes 2 and 3 end to end: browser, LLM judge, study kit, LLM annotator.

``clvq judge`` runs :func:`run_judging`: on ERASER-Movie (by default) with
MiniLM, it

1. reuses the comparison's data splits and fine-tuned classifier
   (:mod:`clvqlearn.cli.comparison`), and fits the four concept
   estimators on unlabelled training sentences;
2. finds each evaluation sentence's salient token (Integrated Gradients)
   and the concept every method gives it;
3. writes the concept browser (``browser.html``) and the human study kit
   (``study.html`` for annotators, ``study_key.json`` for the experimenter);
4. rates all methods' concepts with the LLM judge, twice with different
   method orders (self-agreement) and once with the prediction flipped (a
   control: a judge that reads the prediction should rate lower);
5. answers the study with the LLM annotator and scores it;

and writes the numbers (``summary.json``, ``ratings.csv``,
``annotator.csv``, ``report.md``) and ``judges.png`` to the output folder.
Judge and annotator logs are JSONL files, so ``--resume`` (the default)
continues an interrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .methods import BY_NAME

__all__ = ["run_judging"]

LABEL_WORDS = {"eraser_movie": {"neg": "Negative sentiment review", "pos": "Positive sentiment review"},
               "jigsaw": {"non-toxic": "Non-toxic comment", "toxic": "Toxic comment"}}


def _fit_concepts(config, dataset, n_sentences, log):
    from ..evaluation import fine_tune_classifier
    from ..extraction import LayerPairExtractor
    from .comparison import MODELS, load_splits, make_estimator

    clf_train, fit_texts, ev_all = load_splits(dataset, config, n_eval=config.n_eval)
    clf = fine_tune_classifier(
        clf_train.texts, clf_train.labels, model="minilm", label_names=ev_all.label_names,
        num_labels=ev_all.n_classes, validation_data=(ev_all.texts, ev_all.labels), epochs=config.epochs,
        learning_rate=MODELS["minilm"]["learning_rate"], batch_size=16, max_length=config.max_length,
        random_state=config.seed, device=config.device, verbose=False)
    log(f"classifier accuracy {clf.accuracy:.3f} ({'reused' if clf.reused else 'trained'})")
    ev = ev_all.subset(n_sentences // ev_all.n_classes, random_state=config.seed)
    extractor = LayerPairExtractor(str(clf.path), layers=MODELS["minilm"]["layers"], max_length=config.max_length,
                                   device=config.device).fit(fit_texts)
    fit_pairs, ev_pairs = extractor.transform(fit_texts), extractor.transform(ev.texts)
    estimators = {}
    for method in config.methods:
        t = time.perf_counter()
        estimators[method] = make_estimator(method, config, "minilm").fit(fit_pairs)
        log(f"{method} fitted in {time.perf_counter() - t:.0f} s")
    return clf, ev, fit_pairs, ev_pairs, estimators


def _salient(clf, ev, ev_pairs, config):
    from ..evaluation import token_saliency

    sal = token_saliency(clf, ev.texts, n_steps=config.ig_steps, max_length=config.max_length,
                         device=config.device, verbose=False)
    return sal.rows(ev_pairs, skip_missing=True)


def _concepts(estimators, fit_pairs, ev_pairs, rows, random_state):
    """Per method: descriptions (from the fitting corpus) and each sentence's concept."""
    from ..evaluation.judge import concept_representations
    from ..report.descriptions import describe_estimator

    out = {}
    for method, est in estimators.items():
        table = describe_estimator(est, fit_pairs, random_state=random_state)
        ids = est.predict(ev_pairs)
        salient = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        out[BY_NAME[method].label] = {"table": table, "ids": ids,
                                      "reps": concept_representations(table, salient)}
    return out


def _judge_runs(items, out, guidance, flipped_items, log, backend):
    from ..evaluation.judge import read_judgments, run_judge

    path = out / "judgments.jsonl"
    for seed, name, its in ((0, "order-0", items), (1, "order-1", items), (0, "flipped", flipped_items)):
        t = time.perf_counter()
        run_judge(its, backend, path, guidance=guidance, random_state=seed, judge=f"{backend.name}/{name}")
        log(f"judge {name}: {time.perf_counter() - t:.0f} s")
    return read_judgments(path)


def _trust_checks(frame, backend_name, value):
    """Self-agreement under shuffled order, position bias, reaction to a flipped prediction."""
    from ..evaluation.judge import judge_agreement

    main = frame[frame["judge"].str.endswith(("order-0", "order-1"))]
    first = frame[frame["judge"] == f"{backend_name}/order-0"]
    flipped = frame[frame["judge"] == f"{backend_name}/flipped"]
    both = first.merge(flipped, on=["item_id", "method"], suffixes=("", "_flipped")).dropna(subset=[value])
    return {
        "self_agreement_shuffled_order": judge_agreement(main, value=value),
        "mean_by_position": main.groupby("position")[value].mean().round(3).to_dict(),
        "mean_true_prediction": float(first[value].mean()),
        "mean_flipped_prediction": float(flipped[value].mean()),
        "share_lower_when_flipped": float((both[f"{value}_flipped"] < both[value]).mean()),
        "share_higher_when_flipped": float((both[f"{value}_flipped"] > both[value]).mean()),
    }


def _judge_stats(frame, backend_name):
    from ..evaluation.judge import rating_summary

    main = frame[frame["judge"].str.endswith(("order-0", "order-1"))]
    summary = rating_summary(main, random_state=0)
    stats = {"rating_counts": {str(k): int(v) for k, v in main["rating"].value_counts(dropna=False).items()},
             "ratings": _trust_checks(frame, backend_name, "rating")}
    if main["expected"].notna().any():
        stats["expected_ratings"] = _trust_checks(frame, backend_name, "expected")
        expected = rating_summary(main.assign(rating=main["expected"]), random_state=0)
        summary = summary.join(expected[["mean_rating", "mean_low", "mean_high", "first_share"]]
                               .add_prefix("expected_"))
    return summary, stats


def _plot(summary, annot, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, frame, col, lo, hi, title in (
            (axes[0], summary, "mean_rating", "mean_low", "mean_high", "LLM judge: mean rating (1-3)"),
            (axes[1], annot, "accuracy", "low", "high", "LLM annotator: prediction recovered")):
        frame = frame.sort_index()
        err = np.vstack([frame[col] - frame[lo], frame[hi] - frame[col]])
        ax.bar(range(len(frame)), frame[col], yerr=err, capsize=4, color="#78909c")
        ax.set_xticks(range(len(frame)), frame.index, rotation=15, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylim(1, 3)
    axes[1].set_ylim(0, 1)
    axes[1].axhline(0.5, ls="--", c="k", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(frame) -> str:
    """A pipe table (no tabulate dependency)."""
    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    rows = [[str(i)] + [str(v) for v in row] for i, row in zip(frame.index, frame.to_numpy().tolist())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _report(summary, stats, annot, annot_stats, meta) -> str:
    lines = [f"# LLM judge and LLM annotator: {meta['dataset']}, MiniLM, {meta['n_sentences']} sentences", "",
             f"Command: `{meta['command']}`", "", "## Judge ratings (two method orders pooled)", "",
             _markdown(summary.round(3)), "", "## Judge trust checks", "",
             "```json", json.dumps(stats, indent=1, default=str), "```", "",
             "## LLM annotator (prediction recovery)", "", _markdown(annot.round(3)), "",
             "```json", json.dumps(annot_stats, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def run_judging(out, *, dataset: str = "eraser_movie", n_sentences: int = 100, k: int = 400,
                concept_epochs: int = 10, n_fit: int = 1000, backend=None, llm: bool = True, seed: int = 0,
                device: str = "auto", command: str = "", log=None) -> dict:
    """Browser, study kit, LLM judge and LLM annotator on one data set; see the module doc.

    Parameters
    ----------
    out : str or Path
        Output folder (created).
    dataset : {"eraser_movie", "jigsaw"}
    n_sentences : int, default=100
        Evaluation sentences (class-balanced).
    k : int, default=400
    concept_epochs : int, default=10
    n_fit : int, default=1000
        Unlabelled sentences the concepts are fitted on.
    backend : HFChatBackend or OpenAIBackend, optional
        Judge and annotator (default: the local SmolLM2-135M-Instruct).
    llm : bool, default=True
        False writes only the browser and the study kit (no judge, no
        annotator).
    seed : int
    device : str
    command : str
        Recorded in the outputs.
    log : callable, optional
        Progress messages.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    from ..evaluation.llm import HFChatBackend
    from .comparison import ComparisonConfig

    log = log or (lambda message: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    config = ComparisonConfig(k=k, concept_epochs=concept_epochs, n_fit=n_fit, seed=seed, device=device)
    run = _prepare(out, config, dataset, n_sentences, log)
    meta = {"dataset": dataset, "n_sentences": len(run["ev"]), "k": k, "command": command,
            "n_salient_found": int((run["rows"] >= 0).sum()), "judge": None}
    result = {"meta": meta}
    if llm:
        backend = backend or HFChatBackend("smollm2")
        meta["judge"] = backend.name
        result.update(_llm_part(out, run, dataset, backend, seed, log))
        (out / "report.md").write_text(_report(result["_summary"], result["judge_checks"], result["_annot"],
                                               result["annotator_checks"], meta))
        _plot(result.pop("_summary"), result.pop("_annot"), out / "judges.png")
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _prepare(out, config, dataset, n_sentences, log) -> dict:
    """Fit, find salient tokens, write the browser and the study kit."""
    from ..evaluation.judge import make_judge_items
    from ..report.browser import write_concept_browser
    from ..report.study import make_study

    clf, ev, fit_pairs, ev_pairs, estimators = _fit_concepts(config, dataset, n_sentences, log)
    rows = _salient(clf, ev, ev_pairs, config)
    preds = np.asarray(clf.predict(ev.texts))
    names = list(ev.label_names)
    concepts = _concepts(estimators, fit_pairs, ev_pairs, rows, config.seed)
    write_concept_browser(out / "browser.html", {m: c["ids"] for m, c in concepts.items()}, ev_pairs,
                          salient_rows=rows, labels=ev.labels, predictions=preds, label_names=names,
                          title=f"Concepts: {dataset}, MiniLM layers 4->6, k={config.k}")
    words = LABEL_WORDS.get(dataset, {n: n for n in names})
    reps = {m: c["reps"] for m, c in concepts.items()}
    study = make_study(ev.texts, preds, reps, label_names=names, labels=ev.labels, seed=config.seed)
    study.write_html(out / "study.html")
    study.write_key(out / "study_key.json")
    return {"ev": ev, "rows": rows, "preds": preds, "names": names, "study": study,
            "items": make_judge_items(ev.texts, [words[names[p]] for p in preds], reps),
            "flipped": make_judge_items(ev.texts, [words[names[len(names) - 1 - p]] for p in preds], reps)}


def _llm_part(out, run, dataset, backend, seed, log) -> dict:
    """The LLM judge (with its trust checks) and the LLM annotator."""
    from ..evaluation.judge import GUIDANCE
    from ..evaluation.study import llm_annotate, score_study

    frame = _judge_runs(run["items"], out, GUIDANCE.get(dataset, ""), run["flipped"], log, backend)
    summary, stats = _judge_stats(frame, backend.name)
    t = time.perf_counter()
    answers = llm_annotate(run["study"], backend, out / "annotator.jsonl",
                           task="movie-review sentiment" if dataset == "eraser_movie" else "")
    (out / "annotator_answers.json").write_text(json.dumps(answers, indent=1))
    log(f"annotator: {time.perf_counter() - t:.0f} s")
    score = score_study(run["study"], [answers], random_state=seed)
    preds, names, ev = run["preds"], run["names"], run["ev"]
    annot_stats = {"answer_share": score.answers["answer"].value_counts(normalize=True).round(3).to_dict(),
                   "prediction_share": pd.Series([names[p] for p in preds]).value_counts(normalize=True).to_dict(),
                   "classifier_accuracy_on_these": float((preds == ev.labels).mean()),
                   "n_items": len(run["study"].items), "n_answered": len(score.answers)}
    summary.to_csv(out / "ratings.csv")
    score.per_method.to_csv(out / "annotator.csv")
    return {"ratings": summary.reset_index().to_dict("records"), "judge_checks": stats,
            "annotator": score.per_method.reset_index().to_dict("records"), "annotator_checks": annot_stats,
            "_summary": summary, "_annot": score.per_method}
