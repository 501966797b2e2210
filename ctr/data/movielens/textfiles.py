"""Reading delimited MovieLens text files with checked fields, for every format.

    table, line_no = read_table(path, "::", 4, {0: "the user id"}, encoding="latin-1")

A malformed line raises a CTRError (a ValueError) naming the file and the line;
the check helpers below do the same for a bad value found after parsing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ctr.errors import CTRError

_FIELD_MARK = "\x1f"  # stands in for a multi-character separator (pandas' C parser takes one)


def read_table(
    path: Path,
    sep: str,
    num_fields: int,
    int_columns: dict[int, str],
    encoding: str = "utf-8",
    how_to_get: str = "",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited text file with a checked field count and integer columns.

    Args:
        sep: the field separator; "::" (MovieLens-1M) works too.
        int_columns: column -> what it holds (for error messages), parsed as int64;
            the other columns stay strings.
        how_to_get: what to do about an empty file (appended to the error).

    Returns:
        (columns 0..num_fields-1, 1-based line number of each row). Empty lines
        are skipped; any other malformed line raises a CTRError (a ValueError)
        naming the file and the line.
    """
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise CTRError(f"{path}: expected {encoding} text, got undecodable bytes ({exc})") from None
    shown_sep = sep
    if len(sep) > 1:
        if _FIELD_MARK in text:
            raise CTRError(f"{path}: unexpected control character {_FIELD_MARK!r} in the text")
        text, sep = text.replace(sep, _FIELD_MARK), _FIELD_MARK
    kept = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.rstrip("\r")]
    if not kept:
        raise CTRError(f"{path} is empty; {how_to_get}" if how_to_get else f"{path} is empty")
    line_no = np.fromiter((n for n, _ in kept), dtype=np.int64, count=len(kept))
    counts = np.fromiter((line.count(sep) + 1 for _, line in kept), np.int64, len(kept))
    bad = np.flatnonzero(counts != num_fields)
    if bad.size:
        n, line = kept[bad[0]]
        raise CTRError(
            f"{path}, line {n}: expected {num_fields} fields separated by {shown_sep!r}, "
            f"got {counts[bad[0]]}: {line.replace(sep, shown_sep)[:120]!r}"
        )
    del kept
    options = {
        "sep": sep,
        "header": None,
        "names": list(range(num_fields)),
        "quoting": csv.QUOTE_NONE,
        "na_filter": False,
        "skip_blank_lines": True,
    }
    dtypes = {c: (np.int64 if c in int_columns else object) for c in range(num_fields)}
    try:  # the C parser converts the integer columns in one pass ...
        table = pd.read_csv(io.StringIO(text), dtype=dtypes, **options)
    except ValueError:  # ... and on a bad value, find it (and its line) column by column
        table = pd.read_csv(io.StringIO(text), dtype=object, **options)
        for column, what in int_columns.items():
            table[column] = parse_int(table[column], line_no, path, what)
    assert len(table) == len(line_no), (path, len(table), len(line_no))
    return table, line_no


def parse_int(column: pd.Series, line_no: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(N,) strings -> int64; a CTRError naming the line of the first non-integer."""
    values = pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) | (values != np.round(values)))
    if bad.size:
        i = bad[0]
        raise CTRError(
            f"{path}, line {line_no[i]}: expected {what} to be an integer, got {column.iloc[i]!r}"
        )
    return values.astype(np.int64)


def check_allowed(
    values: np.ndarray, allowed: tuple, line_no: np.ndarray, path: Path, what: str
) -> None:
    """A CTRError naming the line of the first value not in `allowed`."""
    bad = np.flatnonzero(~np.isin(values, allowed))
    if bad.size:
        i = bad[0]
        raise CTRError(
            f"{path}, line {line_no[i]}: expected {what} to be one of {allowed}, got {values[i]!r}"
        )


def check_unique(ids: np.ndarray, line_no: np.ndarray, path: Path, what: str) -> None:
    """A CTRError naming the line of the first repeated id."""
    dup = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if dup.size:
        i = dup[0]
        raise CTRError(f"{path}, line {line_no[i]}: duplicate {what} {ids[i]}")


def check_known(
    ratings: pd.DataFrame, tables: dict[str, tuple[np.ndarray, str]], line_no, path: Path
) -> None:
    """Every rating's ids are in their table: {column: (the table's ids, its file name)}."""
    for column, (ids, source) in tables.items():
        unknown = np.flatnonzero(~np.isin(ratings[column].to_numpy(), ids))
        if unknown.size:
            i = unknown[0]
            raise CTRError(
                f"{path}, line {line_no[i]}: {column} {ratings[column].iloc[i]} is not in {source}"
            )


def split_genres(genres: pd.Series, none_label: str | None = None) -> list[list[str]]:
    """'Action|Comedy' -> ['Action', 'Comedy'] per row; '' (or `none_label`) -> []."""
    lists = genres.astype(str).str.split("|").tolist()
    return [[g for g in gs if g and g != none_label] for gs in lists]
