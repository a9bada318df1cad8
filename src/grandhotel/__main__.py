"""``python -m grandhotel``: the same as the ``grandhotel`` command."""

import sys

from grandhotel.cli import main

sys.exit(main())
