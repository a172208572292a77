"""``python -m cli``: the flowc command line."""

import sys

from cli.main import main

sys.exit(main())
