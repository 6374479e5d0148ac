"""``python -m skfg``: the ``skfg`` command line."""

import sys

from .cli import main

sys.exit(main())
