"""A package no test worker is allowed to run: importing it (even to find a submodule) leaves a mark.

``tests.worker.untrusted`` sits in an already imported package; this one is a package of its own,
so locating ``untrusted_pkg.sub`` (``importlib.util.find_spec``) would run this file.
``SHARDQ_TEST_IMPORT_MARK`` names the mark file.
"""

from __future__ import annotations

import os
from pathlib import Path

# The import-time side effect the worker must never trigger for a package it was not told to allow.
if mark := os.environ.get("SHARDQ_TEST_IMPORT_MARK"):
    Path(mark).write_text("imported")
