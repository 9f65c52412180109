"""``python -m shardq``: the ``shardq`` command."""

import sys

from shardq.cli import main

sys.exit(main())
