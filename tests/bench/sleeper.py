"""A stand-in benchmark for ``test_runner.py``: it starts a child in its own session (as
``LocalCloud`` starts its server), writes the child's pid to ``argv[1]``, waits, and stops the
child on the way out (a ``finally``, as ``LocalCloud.__exit__`` does)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    child = None
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        Path(sys.argv[1]).write_text(str(child.pid))
        time.sleep(120)
    finally:
        if child is not None:
            child.kill()
            child.wait()
