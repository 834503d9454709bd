"""``python -m napari_frontier.cli``: the ``frontier`` command."""

import sys

from . import main

sys.exit(main())
