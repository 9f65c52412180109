"""``python -m shardq.cli``."""

import sys

from shardq.cli import main

sys.exit(main())
