"""The tiny labelled movie corpus the evaluation tests share (16 sentences, 2 classes)."""

import numpy as np

POS = ["a wonderful moving film", "great acting and a great story", "i loved every minute of it",
       "a beautiful and funny movie", "brilliant , warm and clever", "the best film of the year",
       "a moving story with great acting", "funny , clever and wonderful"]
NEG = ["a dull and boring film", "terrible acting , awful story", "i hated every minute of it",
       "a stupid and ugly movie", "lifeless , cold and dumb", "the worst film of the year",
       "a boring story with awful acting", "dull , stupid and terrible"]
TEXTS = POS + NEG
LABELS = np.array([1] * len(POS) + [0] * len(NEG))
FAST = dict(epochs=3, batch_size=4, max_length=32, learning_rate=1e-3, verbose=False)

#: Twelve short sentences (6 per class) for the classifier and zero-shot tests.
SHORT_TEXTS = ["a wonderful moving film", "great acting and a great story", "i loved every minute",
               "a beautiful and funny movie", "brilliant , warm and clever", "the best film of the year",
               "a dull and boring film", "terrible acting , awful story", "i hated every minute",
               "a stupid and ugly movie", "lifeless , cold and dumb", "the worst film of the year"]
SHORT_LABELS = [1] * 6 + [0] * 6
