"""``chains.jsonl``: the per-chain results file, the only state an interrupted evaluation resumes from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError


class ChainLog:
    """One JSON record per finished chain, appended with a single write and fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict[int, dict[str, Any]]:
        """Finished chains by index. A torn last line (a crash mid-write) is cut off so appends stay valid."""
        if self.path.exists() and not self.path.is_file():
            raise RobodualError(f"'{self.path}' is not a file; expected the evaluation's chains.jsonl (move it away "
                                "or pass --overwrite)")
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        records: dict[int, dict[str, Any]] = {}
        for n, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                chain = record["chain"]
                if isinstance(chain, bool) or not isinstance(chain, int) or not 0 <= chain < 1000:
                    raise ValueError(f"'chain' is {chain!r}, expected an index 0..999")
                if isinstance(record.get("completed"), bool) or not isinstance(record.get("completed"), int) \
                        or not 0 <= record["completed"] <= len(record["subtasks"]):
                    raise ValueError(f"'completed' is {record.get('completed')!r}, expected 0..5")
                records[chain] = record
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RobodualError(f"'{self.path}' line {n} is not a chain record ({exc}); delete the line or start "
                                    "over with --overwrite") from None
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
