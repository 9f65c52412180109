"""Which user code a worker may run: the allow-list (``shardq worker --allow``).

A task names its function (``module:function``); whoever can send a task would otherwise choose
the code the fleet runs. A worker therefore imports only modules its operator allowed, checked on
the *name*, before anything is imported (importing ``a.b`` runs ``a/__init__.py`` first, so the
check cannot wait for the import). The same list covers every user function the worker loads: a
train function, the module's ``reduce`` and any other hook looked up in that module.

Patterns, comma-separated:

* ``pkg.*`` — the package ``pkg`` and every module under it (``pkg``, ``pkg.a``, ``pkg.a.b``);
* ``pkg.mod`` — exactly that module;
* ``*`` — any module the worker can import (only where everyone who can send a task may run
  code on the fleet).

The default, with ``--entrypoint`` and no ``--allow``, is the entrypoint's top-level package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# A dotted module name, each part an identifier (no relative import, no path, no spaces).
_MODULE = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_PATTERN = re.compile(rf"^(?:\*|{_MODULE}(?:\.\*)?)$")
FLAG = "--allow"
ENV = "SHARDQ_ALLOW"


class AllowListError(ValueError):
    """An ``--allow`` value that is not a list of module patterns."""


@dataclass(frozen=True)
class AllowList:
    """The module patterns whose functions a worker may import and run.

    Parameters
    ----------
    patterns:
        ``pkg.*``, ``pkg.mod`` or ``*`` (see the module docstring). Empty allows nothing.
    """

    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, *values: str) -> AllowList:
        """Patterns from ``--allow`` values (each comma-separated; blanks ignored).

        Raises ``AllowListError`` naming every malformed pattern.
        """
        patterns = tuple(p.strip() for value in values for p in value.split(",") if p.strip())
        bad = [p for p in patterns if not _PATTERN.match(p)]
        if bad:
            raise AllowListError(
                f"{FLAG} {', '.join(repr(p) for p in bad)}: a pattern is a module ('pkg.mod'), a package "
                "and everything under it ('pkg.*'), or '*' for any module; fix the pattern"
            )
        return cls(patterns)

    @classmethod
    def for_entrypoint(cls, entrypoint: str) -> AllowList:
        """The default beside ``--entrypoint pkg.mod:fn``: the top-level package, ``pkg.*``."""
        top = entrypoint.partition(":")[0].split(".", 1)[0]
        return cls.parse(f"{top}.*")

    @classmethod
    def everything(cls) -> AllowList:
        """Any importable module (``--allow '*'``)."""
        return cls(("*",))

    def permits(self, module: str) -> bool:
        """Whether functions of ``module`` (a dotted name) may be imported and run."""
        if not re.fullmatch(_MODULE, module):
            return False
        for pattern in self.patterns:
            if pattern in ("*", module):
                return True
            if pattern.endswith(".*") and (module == pattern[:-2] or module.startswith(pattern[:-1])):
                return True
        return False

    def refusal(self, entrypoint: str) -> str | None:
        """Why ``entrypoint`` (``module:function``) may not run here, or None when it may."""
        module = entrypoint.partition(":")[0]
        if self.permits(module):
            return None
        allowed = ",".join(self.patterns) or "nothing"
        return (
            f"entrypoint {entrypoint!r} is not allowed on this worker (it runs {allowed}); nothing was "
            f"imported. If you trust {module}, start the worker with {FLAG} '{_suggest(module)}' (or "
            f"{ENV}); otherwise fix the request's entrypoint"
        )

    def __str__(self) -> str:
        return ",".join(self.patterns)


def _suggest(module: str) -> str:
    return module.split(".", 1)[0] + ".*"


def allow_list(values: Iterable[str] | None, entrypoint: str | None) -> AllowList:
    """The worker's allow-list from its flags: ``--allow`` values, else ``--entrypoint``'s package.

    Raises ``AllowListError`` when neither is given (a worker that may run nothing is a mistake,
    one that runs anything must be asked for with ``--allow '*'``), when a pattern is malformed, or
    when ``--entrypoint`` itself falls outside ``--allow``.
    """
    given = [v for v in values or () if v.strip()]
    if not given:
        if entrypoint:
            return AllowList.for_entrypoint(entrypoint)
        raise AllowListError(
            f"the worker needs to know whose code it may run: pass {FLAG} 'pkg.*' (comma-separated module "
            f"patterns, also {ENV}), or --entrypoint module:function; {FLAG} '*' runs any module a task names"
        )
    allow = AllowList.parse(*given)
    if entrypoint and (why := allow.refusal(entrypoint)):
        raise AllowListError(f"--entrypoint: {why}")
    return allow
