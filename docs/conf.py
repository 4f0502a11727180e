"""Sphinx configuration of the clvqlearn documentation site.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (``.ci/run`` does
this with warnings as errors).  The gallery executes only the examples named
``plot_*.py``; the others are shown with their code (the test suite runs
every example in ``tests/test_examples.py``).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import clvqlearn  # noqa: E402

project = "clvqlearn"
author = "clvqlearn developers"
copyright = "clvqlearn developers"
version = release = clvqlearn.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "gen_modules", "results/**/*.md", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]  # links to source files outside the site (e.g. ../clvqlearn/x.py)

autosummary_generate = True
templates_path = ["_templates"]
# scikit-learn's metadata-routing setters (set_fit_request, ...) are generated on every estimator and their
# docstrings point into scikit-learn's own documentation: leave them out.
_ROUTING = [f"set_{m}_request" for m in ("fit", "partial_fit", "predict", "transform", "inverse_transform",
                                          "score", "predict_proba", "decision_function", "split")]
autodoc_default_options = {"members": True, "inherited-members": False, "exclude-members": ",".join(_ROUTING)}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
}

html_theme = "pydata_sphinx_theme"
html_title = "clvqlearn"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []
