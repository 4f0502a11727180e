"""Looking at concepts: descriptions, the HTML concept browser, the human study kit.

See docs/browser.md and docs/judges.md.
"""

from .browser import concept_browser_html, write_concept_browser
from .descriptions import describe_concepts, describe_estimator
from .study import Study, make_study

__all__ = ["Study", "concept_browser_html", "describe_concepts", "describe_estimator", "make_study",
           "write_concept_browser"]
