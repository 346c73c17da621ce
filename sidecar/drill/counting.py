"""Store requests made during a scenario, by class: from the store's own audit log when the
drill can read it (``--store-audit-log``), else from the fault proxy's count. Pure except for
reading the audit log's new lines."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def store_paths(path: str) -> list[str]:
    """Every store path a read of secret ``path`` may use, whatever its mount: KV v1 (the path
    itself) and KV v2's data and metadata paths for each place the mount could end."""
    forms = [path]
    parts = path.split("/")
    for cut in range(1, len(parts)):
        mount, rest = "/".join(parts[:cut]), "/".join(parts[cut:])
        forms += [f"{mount}/data/{rest}", f"{mount}/metadata/{rest}"]
    return forms


def by_class(counts: Counter[str], class_of: dict[str, str]) -> Counter[str]:
    """``counts`` by store path, summed by the class of the secret each path reads."""
    owner = {form: name for path, name in class_of.items() for form in store_paths(path)}
    total: Counter[str] = Counter()
    for store_path, count in counts.items():
        if (name := owner.get(store_path)) is not None:
            total[name] += count
    return total


class AuditTail:
    """Request records appended to the store's audit logs since the last ``take``."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._offsets = {f: f.stat().st_size if f.exists() else 0 for f in files}

    def take(self) -> Counter[str]:
        """Requests by store path in the records written since the last call."""
        counts: Counter[str] = Counter()
        for file in self.files:
            if not file.exists():
                continue
            with file.open("rb") as stream:
                stream.seek(self._offsets[file])
                text = stream.read()
            end = text.rfind(b"\n") + 1  # a line still being written waits for the next take
            self._offsets[file] += end
            for line in text[:end].splitlines():
                try:
                    record = json.loads(line)
                    if record.get("type") == "request":
                        counts[str(record["request"]["path"])] += 1
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
        return counts
