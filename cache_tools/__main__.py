import sys

from cache_tools.cli import main

sys.exit(main())
