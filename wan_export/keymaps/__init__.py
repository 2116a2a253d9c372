"""Declarative key maps between stock Wan names (the hub) and foreign layouts.

A row pairs a stock pattern with a foreign pattern over whole names; `{i}`
matches a block index and `{rest}` the remaining suffix. Mapping a key list
raises one error listing every unmapped, ambiguous or colliding key.
"""
from __future__ import annotations

import re
from functools import lru_cache

from wan_export.errors import BadInputError

_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "rest": r".+"}


@lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


class KeyMap:
    """Rows of (stock pattern, foreign pattern); both directions are exact inverses."""

    def __init__(self, name: str, rows: list[tuple[str, str]]):
        self.name = name
        self.rows = list(rows)
        self._literal = {0: {}, 1: {}}          # fast path for rows without placeholders
        for s, f in self.rows:
            if "{" not in s:
                self._literal[0][s] = f
                self._literal[1][f] = s

    def _map(self, key: str, forward: bool) -> list[str]:
        src, dst = (0, 1) if forward else (1, 0)
        hits = []
        if key in self._literal[src]:
            hits.append(self._literal[src][key])
        for row in self.rows:
            if "{" not in row[src]:
                continue
            m = _compile(row[src]).fullmatch(key)
            if m:
                hits.append(row[dst].format(**m.groupdict()))
        return sorted(set(hits))

    def from_stock(self, key: str) -> str | None:
        hits = self._map(key, True)
        return hits[0] if len(hits) == 1 else None

    def to_stock(self, key: str) -> str | None:
        hits = self._map(key, False)
        return hits[0] if len(hits) == 1 else None

    def rename(self, keys, *, to_stock: bool, path: str | None = None) -> dict[str, str]:
        """Map every key; raise once listing all keys that did not map one-to-one."""
        out, unmapped, ambiguous = {}, [], []
        for k in keys:
            hits = self._map(k, not to_stock)
            if not hits:
                unmapped.append(k)
            elif len(hits) > 1:
                ambiguous.append(f"{k} -> {' | '.join(hits)}")
            else:
                out[k] = hits[0]
        seen: dict[str, str] = {}
        collisions = []
        for k, v in out.items():
            if v in seen:
                collisions.append(f"{seen[v]} and {k} -> {v}")
            seen[v] = k
        problems = []
        if unmapped:
            problems.append(f"{len(unmapped)} unmapped: {', '.join(unmapped[:20])}"
                            + (" ..." if len(unmapped) > 20 else ""))
        if ambiguous:
            problems.append(f"{len(ambiguous)} ambiguous: {'; '.join(ambiguous[:10])}")
        if collisions:
            problems.append(f"{len(collisions)} doubly mapped: {'; '.join(collisions[:10])}")
        if problems:
            direction = f"{self.name} -> stock" if to_stock else f"stock -> {self.name}"
            raise BadInputError(f"key map {direction}: " + "; ".join(problems), path)
        return out
