"""``python -m DeepSimilarityLib`` runs the ``deepsim`` command line."""

import sys

from .cli import main

sys.exit(main())
