"""The one rule that turns a result, a folder or an extractor's model into a classifier (evaluation.tasks)."""

import pytest

from clvqlearn.evaluation import ClassifierResult, load_classifier, resolve_classifier


def test_results_folders_and_fallbacks(tiny_clf, tmp_path):
    assert resolve_classifier(tiny_clf) is tiny_clf
    by_path = resolve_classifier(tiny_clf.path)
    assert isinstance(by_path, ClassifierResult) and by_path.path == tiny_clf.path
    assert resolve_classifier(None, fallback=str(tiny_clf.path)).accuracy == load_classifier(tiny_clf.path).accuracy
    assert resolve_classifier(None, fallback=str(tmp_path)) is None  # not a checkpoint, not needed
    assert resolve_classifier(str(tmp_path)) is None
    with pytest.raises(ValueError, match="protocol='splice' needs the task classifier"):
        resolve_classifier(None, fallback=str(tmp_path), required_for="protocol='splice'")
    with pytest.raises(FileNotFoundError, match="not a clvqlearn classifier checkpoint"):
        resolve_classifier(str(tmp_path), required_for="protocol='splice'")
    with pytest.raises(TypeError, match="classifier must be a ClassifierResult"):
        resolve_classifier(3)
