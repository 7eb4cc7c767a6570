"""The bundle's entry script: the same ``main`` as the ``histoviewer`` console script.

``freeze_support`` must run before anything else in a frozen program: the Dask workers of
``histoviewer batch`` are this executable started again by multiprocessing, and it turns such a
start into a worker instead of a second HistoViewer.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from viewer.launcher import main

    sys.exit(main())
