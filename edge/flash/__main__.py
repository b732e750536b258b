"""``python -m edge.flash`` == ``edge-flash``."""

import sys

from edge.flash import main

sys.exit(main())
