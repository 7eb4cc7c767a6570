"""``python -m viewer`` behaves exactly like the ``histoviewer`` command."""

import sys

from viewer.cli import main

sys.exit(main())
