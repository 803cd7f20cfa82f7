"""Flower's per-round progress line, as ``flwr run --stream`` prints it.

After every round Flower's server logs ``fit progress: (round, loss, {'accuracy': a}, time)``
with the centralised evaluation's loss and accuracy; ``gcfl run``, ``gcfl deploy``
and ``gcfl compare`` read the round (and loss and accuracy) from it.
"""

from __future__ import annotations

import re

PROGRESS_LINE = re.compile(r"fit progress: \((\d+), ([^,]+), \{'accuracy': ([^}]+)\}")
