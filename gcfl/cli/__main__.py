"""``python -m gcfl.cli``: the ``gcfl`` command."""

import sys

from gcfl.cli import main

sys.exit(main())
