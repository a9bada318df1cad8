"""``python -m bench SCENARIO [options]``."""

import sys

from bench import cli

sys.exit(cli.main())
