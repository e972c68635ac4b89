"""train.py's command line on the narrow networks (filters=4) that tests of the loop's mechanics use.

Multi-process tests (several workers, kill -9) start this instead of train.py so that each process
builds a model of a few thousand parameters instead of 114 million; everything else is train.py.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

import train  # noqa: E402  (defines the flags)
from training import loop  # noqa: E402

NARROW_FILTERS = 4

if __name__ == "__main__":
    loop.train = functools.partial(loop.train, filters=NARROW_FILTERS)
    app.run(train.main)
