"""A module no test worker is allowed to run: importing it leaves a mark on disk.

The allow-list tests name it in tasks and check the mark never appears (nothing was imported,
not even the module's top level). ``SHARDQ_TEST_IMPORT_MARK`` names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The import-time side effect the worker must never trigger for a module it was not told to allow.
if mark := os.environ.get("SHARDQ_TEST_IMPORT_MARK"):
    Path(mark).write_text("imported")


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Never reached by an allow-list test."""
    return {"num_samples": 1}
