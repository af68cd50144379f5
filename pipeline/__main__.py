"""`python -m pipeline ...`: the same command line as `fame-pipeline`."""

import sys

from pipeline.cli import main

sys.exit(main())
