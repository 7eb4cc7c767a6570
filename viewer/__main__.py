"""``python -m viewer`` behaves exactly like the ``histoviewer`` command."""

import sys

from viewer.launcher import main

sys.exit(main())
