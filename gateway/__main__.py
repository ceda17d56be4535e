"""``python -m gateway``: the command line (gateway/cli.py)."""

import sys

from gateway.cli import main

sys.exit(main())
