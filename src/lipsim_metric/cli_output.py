"""Result writers of ``lipsim-score``: results are written as they are scored, so a killed run keeps its work.

* ``table``, ``csv`` and ``jsonl`` rows are written and flushed after every batch; the file is valid after any batch.
* ``json`` is one document, so it is written once, at the end, or when the run is interrupted (SIGINT/SIGTERM:
  the document then says ``"interrupted": true``). While the run goes on, each batch is also appended, flushed, to
  ``FILE.partial`` (JSON lines), so even a run killed with SIGKILL leaves its scores; ``--resume`` reads that file
  too, and it is removed once the document is written.

:func:`read_previous` reads what an earlier run wrote, for ``--resume``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["FIELDS", "TRIPLET_FIELDS", "ResultWriter", "open_writer", "read_previous", "partial_path"]

#: CSV columns (and JSON keys) of one scored pair.
FIELDS = ["name", "path_a", "path_b", "distance", "radius", "radius_a", "radius_b", "height_a", "width_a",
          "height_b", "width_b"]
#: CSV columns of one 2AFC judgement (``--2afc``).
TRIPLET_FIELDS = ["name", "path_ref", "path_0", "path_1", "d0", "d1", "prediction", "radius"]

#: Columns the table shows (the paths and sizes are in the CSV and JSON formats).
_TABLE_FIELDS = frozenset({"distance", "radius", "d0", "d1", "prediction"})


def partial_path(output: Path) -> Path:
    """Where the ``json`` format keeps its per-batch rows until the document is written."""
    return output.with_name(output.name + ".partial")


class ResultWriter:
    """Writes rows as they come (:meth:`write`) and ends the output (:meth:`finish`).

    Args:
        out: text stream (stdout or an opened ``--output`` file).
        fmt: ``"table"``, ``"csv"``, ``"jsonl"`` or ``"json"``.
        fields: the columns.
        header: write the header (CSV, table); ``False`` when appending to a file (``--resume``).
        name_width: width of the name column of the table.
        previous: rows an earlier run wrote (``--resume``); kept in the JSON document.
        partial: the ``FILE.partial`` stream of the ``json`` format (``None`` for stdout).
    """

    def __init__(self, out: TextIO, fmt: str, fields: Sequence[str], header: bool = True, name_width: int = 4,
                 previous: Sequence[dict[str, Any]] = (), partial: TextIO | None = None) -> None:
        self.out, self.fmt, self.fields, self.partial = out, fmt, list(fields), partial
        self.rows: list[dict[str, Any]] = list(previous) if fmt == "json" else []
        self.name_width = name_width
        self._csv = csv.DictWriter(out, fieldnames=self.fields, lineterminator="\n") if fmt == "csv" else None
        if header and self._csv is not None:
            self._csv.writeheader()
        elif header and fmt == "table":
            self._table_row({f: f for f in self.fields})
        self._flush()

    def _table_row(self, row: dict[str, Any]) -> None:
        cells = []
        for field in self.fields:
            if field not in _TABLE_FIELDS:
                continue
            value = row[field]
            cells.append(f"{value:>12}" if isinstance(value, str) else
                         f"{value:>12d}" if isinstance(value, int) else f"{value:>12.6g}")
        self.out.write(f"{row['name']:<{self.name_width}}  " + "  ".join(cells) + "\n")

    def _flush(self) -> None:
        self.out.flush()
        if self.partial is not None:
            self.partial.flush()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write one batch of rows and flush."""
        for row in rows:
            if self._csv is not None:
                self._csv.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
            elif self.fmt == "jsonl":
                self.out.write(json.dumps(row) + "\n")
            elif self.fmt == "table":
                self._table_row(row)
            else:
                self.rows.append(row)
                if self.partial is not None:
                    self.partial.write(json.dumps(row) + "\n")
        self._flush()

    def finish(self, summary_line: str, document: dict[str, Any]) -> None:
        """End the output: the table's summary line, or the JSON document (``rows`` under ``"pairs"``)."""
        if self.fmt == "table":
            self.out.write(summary_line + "\n")
        elif self.fmt == "json":
            json.dump({"pairs": self.rows, **document}, self.out, indent=2)
            self.out.write("\n")
        self._flush()


def open_writer(output: Path | None, stdout: TextIO, fmt: str, fields: Sequence[str], resume: bool,
                name_width: int, previous: Sequence[dict[str, Any]]) -> tuple[ResultWriter, list[TextIO]]:
    """Open the output (before anything is scored, so a bad target fails at once) and build its writer.

    Returns the writer and the streams to close at the end. For ``json`` with a file, the document goes to a
    temporary file that :func:`commit_json` moves into place, and the rows also go to ``FILE.partial``.

    Raises:
        OSError: the output cannot be opened for writing (reported by the caller).
    """
    if output is None:
        return ResultWriter(stdout, fmt, fields, name_width=name_width, previous=previous), []
    if fmt == "json":
        partial = open(partial_path(output), "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        document = open(output.with_name(output.name + ".tmp"), "w", encoding="utf-8")  # noqa: SIM115
        return ResultWriter(document, fmt, fields, previous=previous, partial=partial), [document, partial]
    append = resume and output.is_file() and output.stat().st_size > 0
    stream = open(output, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
    return ResultWriter(stream, fmt, fields, header=not append, name_width=name_width), [stream]


def commit_json(output: Path) -> None:
    """Move the finished JSON document into place (atomically) and drop the ``.partial`` rows."""
    os.replace(output.with_name(output.name + ".tmp"), output)
    partial_path(output).unlink(missing_ok=True)


def _complete_lines(path: Path) -> list[str]:
    """The complete lines of ``path``; a last line cut off by a kill (no newline) is removed from the file."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    return data[:cut].decode("utf-8").splitlines()


def read_previous(output: Path, fmt: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Rows an earlier run wrote to ``output`` (and, for ``json``, to ``FILE.partial``), for ``--resume``.

    Raises:
        ValueError: the file is not output of this format (the message says what to do).
    """
    rows: list[dict[str, Any]] = []
    if fmt == "json":
        if output.is_file() and output.stat().st_size > 0:
            try:
                document = json.loads(output.read_text(encoding="utf-8"))
                rows = list(document["pairs"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"--resume: {output} is not a lipsim-score JSON document; give the file an earlier "
                                 "run wrote with --format json, or another --output") from None
        partial = partial_path(output)
        if partial.is_file():
            rows += [json.loads(line) for line in _complete_lines(partial) if line.strip()]
    elif fmt == "jsonl":
        if output.is_file():
            for number, line in enumerate(_complete_lines(output), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"--resume: line {number} of {output} is not JSON; give the file an earlier "
                                     "run wrote with --format jsonl") from None
    elif fmt == "csv":
        if output.is_file() and output.stat().st_size > 0:
            lines = _complete_lines(output)
            reader = csv.DictReader(lines)
            if reader.fieldnames is None or list(reader.fieldnames) != list(fields):
                raise ValueError(f"--resume: {output} does not start with the header {','.join(fields)}; give the "
                                 "file an earlier run wrote with the same --format csv (and mode)")
            rows = [dict(row) for row in reader]
    else:
        raise ValueError(f"--resume needs --format csv, jsonl or json (not {fmt}) and --output FILE")
    if rows and any("name" not in row for row in rows):
        raise ValueError(f"--resume: {output} has rows without a 'name'; it was not written by lipsim-score")
    return rows
