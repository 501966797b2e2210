"""Fetching the MovieLens archives from GroupLens, checked and extracted atomically.

    path = download_dataset("movielens-1m")          # -> data/ml-1m
    ctr data download movielens-20m --data-dir /big/ml-20m

The archive is streamed to a temporary file beside the target, its checksum
compared (nothing is extracted from an archive that does not match), then
extracted into a temporary directory that is renamed into place: an
interrupted or refused download leaves no half-written data directory. With
no network, the error names the URL and how to place the files by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctr.data.movielens.raw import DATA_FILES as ML100K_FILES
from ctr.data.movielens.raw_large import GROUPLENS_FILES, ML1M_FILES, ML20M_FILES
from ctr.errors import CTRError


@dataclass(frozen=True)
class Archive:
    url: str
    folder: str  # the archive's top folder, and the default data/<folder>
    files: tuple[str, ...]  # what the adapter reads; must be in the archive
    md5: str | None  # GroupLens's published MD5 (see below); None = not known


# MD5s as GroupLens publishes them beside each archive (<url>.md5, e.g.
# https://files.grouplens.org/datasets/movielens/ml-20m.zip.md5). They could not
# be fetched where this table was written (no network); each value is the one
# that several independent public projects pin for the same URL. GroupLens
# publishes no SHA-256: pass sha256= (--sha256) to check one you trust instead.
ARCHIVES = {
    "movielens-100k": Archive(
        f"{GROUPLENS_FILES}/ml-100k.zip",
        "ml-100k",
        ML100K_FILES,
        "0e33842e24a9c977be4e0107933c0723",
    ),
    "movielens-1m": Archive(
        f"{GROUPLENS_FILES}/ml-1m.zip", "ml-1m", ML1M_FILES, "c4d9eecfca2ab87c1945afe126590906"
    ),
    "movielens-20m": Archive(
        f"{GROUPLENS_FILES}/ml-20m.zip", "ml-20m", ML20M_FILES, "cd245b17a1ae2cc31bb14903e1204af3"
    ),
}
_CHUNK = 1 << 20


def _by_hand(archive: Archive, url: str, target: Path) -> str:
    return (
        f"download {url} on a machine with network access, unzip it and put "
        f"{', '.join(archive.files)} (from its {archive.folder}/ folder) into {target}"
    )


def download_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download, check and extract one MovieLens archive; return its directory.

    Args:
        name: "movielens-100k", "movielens-1m" or "movielens-20m".
        data_dir: where the files go (default data/ml-1m etc.).
        url: another place to fetch the same archive from (a mirror).
        sha256: the archive's expected SHA-256; checked instead of the MD5.
        md5: the archive's expected MD5, instead of the published one.
        force: replace a data_dir that already holds the files.
        log: called with progress lines (e.g. click.echo); silent by default.

    Raises:
        CTRError: unknown name, unreachable URL (saying how to place the files
            by hand), checksum mismatch, an archive without the expected files,
            or a data_dir that exists and is not empty (without force).
    """
    if name not in ARCHIVES:
        raise CTRError(f"expected a data set in {sorted(ARCHIVES)} to download, got {name!r}")
    archive = ARCHIVES[name]
    url = url or archive.url
    target = Path(data_dir) if data_dir is not None else Path("data") / archive.folder
    say = log or (lambda _line: None)
    if target.is_dir() and any(target.iterdir()):
        if all((target / f).is_file() for f in archive.files) and not force:
            say(f"{name}: {target} already holds {', '.join(archive.files)}; nothing to do")
            return target
        if not force:
            raise CTRError(
                f"{target} exists and does not hold the {name} files; remove it, choose "
                f"another --data-dir, or pass --force to replace it"
            )
    expected = _expected_checksum(archive, sha256, md5)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        zip_path = Path(tmp) / f"{archive.folder}.zip"
        say(f"{name}: downloading {url}")
        digests = _fetch(url, zip_path, timeout, archive, target)
        algorithm, want = expected
        got = digests[algorithm]
        if got != want:
            raise CTRError(
                f"{url}: {algorithm} checksum mismatch: expected {want}, got {got}; the "
                f"download is damaged or not the {name} archive, and nothing was extracted"
            )
        say(f"{name}: {algorithm} {got} ok, extracting")
        extracted = _extract(zip_path, Path(tmp) / "x", archive, url)
        zip_path.unlink()
        _move_into_place(extracted, target, Path(tmp))
    say(f"{name}: {', '.join(archive.files)} are in {target}")
    return target


def _expected_checksum(archive: Archive, sha256: str | None, md5: str | None) -> tuple[str, str]:
    """(algorithm, lower-case hex digest) to check the download against."""
    for algorithm, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is not None:
            value = value.strip().lower()
            if len(value) != length or any(c not in "0123456789abcdef" for c in value):
                raise CTRError(
                    f"expected --{algorithm} as {length} hexadecimal digits, got {value!r}"
                )
            return algorithm, value
    if archive.md5 is None:
        raise CTRError(
            f"no known checksum for {archive.url}: pass --sha256 (or --md5) with the value "
            f"you trust"
        )
    return "md5", archive.md5


def _fetch(url: str, path: Path, timeout: float, archive: Archive, target: Path) -> dict[str, str]:
    """Stream `url` into `path`; return its {"md5": ..., "sha256": ...} hex digests."""
    hashes = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CTRError(
            f"could not download {url} ({reason}); without network access, "
            f"{_by_hand(archive, url, target)}"
        ) from None
    return {algorithm: h.hexdigest() for algorithm, h in hashes.items()}


def _extract(zip_path: Path, into: Path, archive: Archive, url: str) -> Path:
    """Extract the archive into `into`; return the folder that holds `archive.files`."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            root = into.resolve()
            for member in zf.namelist():  # no member may land outside `into`
                if not (root / member).resolve().is_relative_to(root):
                    raise CTRError(f"{url}: unsafe path {member!r} in the archive; not extracted")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise CTRError(f"{url}: not a zip archive ({exc})") from None
    for folder in (into / archive.folder, into):
        if all((folder / f).is_file() for f in archive.files):
            return folder
    raise CTRError(
        f"{url}: expected {', '.join(archive.files)} in the archive's {archive.folder}/ folder, "
        f"got {sorted(str(p.relative_to(into)) for p in into.rglob('*') if p.is_file())[:20]}"
    )


def _move_into_place(extracted: Path, target: Path, tmp: Path) -> None:
    """Rename `extracted` to `target`; an existing target is swapped out, then removed."""
    old = None
    if target.exists():
        old = tmp / "replaced"
        os.replace(target, old)
    try:
        os.replace(extracted, target)
    except OSError:
        if old is not None:  # put the old directory back
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
