"""`python -m trainer` runs the `fame-train` command line."""

import sys

from trainer.cli import main

sys.exit(main())
