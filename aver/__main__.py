"""``python -m aver``: the same command line as the ``aver`` console script."""

import sys

from aver.cli import main

sys.exit(main())
