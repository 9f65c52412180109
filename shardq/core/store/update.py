"""UpdateExpression building for the job table (SET, ADD, REMOVE, DELETE with their conditions)."""

from __future__ import annotations

from typing import Any

from shardq.core.store.keys import (
    ENDING_ATTRIBUTE,
    _to_item,
    job_key,
    now_iso,
)


class _Update:
    """Builds one UpdateExpression with its names and values (SET, ADD, REMOVE, DELETE)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.clauses: dict[str, list[str]] = {"SET": [], "ADD": [], "REMOVE": [], "DELETE": []}
        self.conditions: list[str] = ["attribute_exists(pk)"]

    def copy(self) -> _Update:
        """An independent copy (``request`` stamps the update it builds: build each request once)."""
        out = _Update()
        out.names, out.values = dict(self.names), dict(self.values)
        out.clauses = {verb: list(parts) for verb, parts in self.clauses.items()}
        out.conditions = list(self.conditions)
        return out

    def _name(self, attr: str) -> str:
        ref = f"#n{len(self.names)}"
        self.names[ref] = attr
        return ref

    def _value(self, value: Any) -> str:
        ref = f":v{len(self.values)}"
        self.values[ref] = value
        return ref

    def set(self, **attrs: Any) -> _Update:
        for attr, value in attrs.items():
            if value is None:
                self.remove(attr)
            else:
                self.clauses["SET"].append(f"{self._name(attr)} = {self._value(value)}")
        return self

    def add(self, attr: str, value: Any) -> _Update:
        self.clauses["ADD"].append(f"{self._name(attr)} {self._value(value)}")
        return self

    def remove(self, *attrs: str) -> _Update:
        self.clauses["REMOVE"].extend(self._name(a) for a in attrs)
        return self

    def delete(self, attr: str, value: Any) -> _Update:
        self.clauses["DELETE"].append(f"{self._name(attr)} {self._value(value)}")
        return self

    def expect(self, **attrs: Any) -> _Update:
        for attr, value in attrs.items():
            self.conditions.append(f"{self._name(attr)} = {self._value(value)}")
        return self

    def condition(self, expression: str, **values: Any) -> _Update:
        """A raw condition over ``#name`` placeholders already named, with ``:name`` values."""
        self.conditions.append(expression)
        self.values.update({f":{k}": v for k, v in values.items()})
        return self

    def request(self, table: str, job_id: str, *, stamp: bool = True) -> dict[str, Any]:
        if stamp:
            self.set(updated_at=now_iso())
        expression = " ".join(f"{verb} {', '.join(parts)}" for verb, parts in self.clauses.items() if parts)
        out: dict[str, Any] = {
            "TableName": table,
            "Key": job_key(job_id),
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(self.conditions),
            "ExpressionAttributeNames": self.names,
        }
        if self.values:
            out["ExpressionAttributeValues"] = _to_item(self.values)
        return out


def _ref(update: _Update, attr: str) -> str:
    """The ``#name`` placeholder of ``attr`` in ``update`` (named once)."""
    for ref, name in update.names.items():
        if name == attr:
            return ref
    return update._name(attr)


def not_ending(update: _Update) -> _Update:
    """Condition ``update`` on its job not being frozen to end (``JobStore.freeze_ending``): every
    write that counts an outcome (or sends, drops or stops on its behalf) carries it, so nothing
    counts after the manifest's read and status and manifest agree."""
    return update.condition(f"attribute_not_exists({_ref(update, ENDING_ATTRIBUTE)})")
