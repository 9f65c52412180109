"""Which version of the user's training code a worker runs, and picking up an edited module.

A worker process imports the entrypoint's module once and Python keeps it in ``sys.modules``:
without help, a training function edited while workers run is silently ignored until every
worker restarts. ``load_module`` imports a module the first time and, on every later task,
compares its file's size and modification time with those it was loaded from; when they differ
it reloads the module before the task runs, and logs the old and new fingerprints. Only the
entrypoint's own module is reloaded (not the modules it imports: reloading those safely needs
their cooperation); restart the workers after changing a helper module.

``fingerprint`` names the code that produced a result, recorded in each ``ShardResult``
(``code_version``) and the result manifest: ``dist==version`` for a module installed from a
distribution (a wheel, not an editable install), else ``sha256:<first 16 hex>`` of the module's
source file, or None when neither can be read.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

log = logging.getLogger("shardq.worker")

_lock = threading.Lock()
# module name → (size, mtime_ns) of the file it was (re)loaded from
_loaded_stamp: dict[str, tuple[int, int]] = {}
# (path, size, mtime_ns) → fingerprint: a file is hashed once per version, not per task
_hashes: dict[tuple[str, int, int], str] = {}


def _stamp(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def load_module(name: str) -> ModuleType:
    """Import ``name``, or reload it when its source file changed since it was loaded.

    Raises what ``importlib.import_module`` raises.
    """
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            module = importlib.import_module(name)
            stamp = _stamp(getattr(module, "__file__", None))
            if stamp is not None:
                _loaded_stamp[name] = stamp
            return module
        path = getattr(module, "__file__", None)
        stamp, before = _stamp(path), _loaded_stamp.get(name)
        if stamp is None or before is None:
            if stamp is not None:  # imported by someone else first: this is the version it runs
                _loaded_stamp[name] = stamp
            return module
        if stamp == before:
            return module
        old = _hashes.get((str(path), *before))
        module = importlib.reload(module)
        _loaded_stamp[name] = stamp
    log.warning(
        "reloaded %s: its file changed since it was loaded (%s -> %s); modules it imports are not "
        "reloaded (restart the workers after changing those)",
        name,
        old or "unknown",
        fingerprint_file(str(path)),
    )
    return module


def fingerprint_file(path: str) -> str | None:
    """``sha256:<16 hex>`` of the file's bytes (cached per size and mtime), None if unreadable."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    key = (path, *stamp)
    found = _hashes.get(key)
    if found is None:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return None
        found = _hashes[key] = f"sha256:{digest[:16]}"
    return found


def _distribution(name: str, origin: str) -> str | None:
    """``dist==version`` when ``origin`` is a file of an installed (non-editable) distribution."""
    from importlib import metadata

    if "site-packages" not in origin and "dist-packages" not in origin:
        return None
    top = name.split(".", 1)[0]
    try:
        dists = metadata.packages_distributions().get(top) or []
        if dists:
            return f"{dists[0]}=={metadata.version(dists[0])}"
    except Exception:  # a broken metadata folder must not fail the task
        return None
    return None


def fingerprint(entrypoint: str | None) -> str | None:
    """The version of the code behind ``entrypoint`` (``module:function``); None if unknown.

    Reads the module's file as it is now (the same file ``load_module`` runs); it never imports
    the module itself (``find_spec`` may import its parent packages) and never raises.
    """
    if not entrypoint:
        return None
    name = entrypoint.partition(":")[0]
    try:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
    except Exception:
        return None
    if not origin or not os.path.isfile(origin):
        return None
    return _distribution(name, origin) or fingerprint_file(origin)
