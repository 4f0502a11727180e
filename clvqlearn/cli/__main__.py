"""``python -m clvqlearn.cli`` is ``clvq``."""

import sys

from ._main import main

sys.exit(main())
