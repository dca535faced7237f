"""``python -m distributed_agents ...``: the same as the ``distributed-agents`` command."""

from __future__ import annotations

import sys

from distributed_agents.cli import main

sys.exit(main())
