"""`python -m twin`: the `twin` command line (twin.cli)."""

import sys

from .cli import main

sys.exit(main())
