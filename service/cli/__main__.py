"""``python -m service.cli``: the ``whatmatters`` command."""

import sys

from service.cli import main

sys.exit(main())
