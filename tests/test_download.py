"""ctr.data.download against a loopback HTTP server serving small fixture archives.

Nothing here reaches the internet: the server is http.server on 127.0.0.1 in a
thread, the archives are zipped from tests/movielens_fixtures.py files.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctr.config import DataConfig
from ctr.data import MovieLens1MAdapter
from ctr.data.download import ARCHIVES, download_dataset
from ctr.errors import CTRError
from experiments.cli import main
from tests.movielens_fixtures import write_ml1m


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, {archive name: sha256}) of a loopback server over fixture zips."""
    root = tmp_path_factory.mktemp("www")
    files = write_ml1m(tmp_path_factory.mktemp("src") / "ml-1m")
    with zipfile.ZipFile(root / "ml-1m.zip", "w") as zf:  # the GroupLens layout: ml-1m/...
        for path in sorted(files.iterdir()):
            zf.write(path, f"ml-1m/{path.name}")
        zf.writestr("ml-1m/README", "fixture\n")
    with zipfile.ZipFile(root / "wrong.zip", "w") as zf:  # a zip without the data files
        zf.writestr("ml-1m/README", "nothing else\n")
    (root / "broken.zip").write_bytes(b"not a zip at all")
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sums
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-1m.zip"


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_a_good_archive_is_checked_and_extracted(served, tmp_path):
    base, sums = served
    lines = []
    target = download_dataset(
        "movielens-1m",
        tmp_path / "ml-1m",
        url=f"{base}/ml-1m.zip",
        sha256=sums["ml-1m.zip"].upper(),  # case does not matter
        log=lines.append,
    )
    assert target == tmp_path / "ml-1m"
    assert sorted(p.name for p in target.iterdir()) == [
        "README",
        "movies.dat",
        "ratings.dat",
        "users.dat",
    ]
    assert _leftovers(tmp_path) == ["ml-1m"]  # no temporary file or directory left
    assert any("sha256" in line and "ok" in line for line in lines)
    # what was extracted is what the adapter reads
    _, train, _, _ = MovieLens1MAdapter(target, DataConfig(num_eval_negatives=5)).build()
    assert train.num_positives > 0
    # a second call finds the files and does nothing; --force replaces them
    again = []
    download_dataset("movielens-1m", target, url=f"{base}/nope.zip", log=again.append)
    assert "nothing to do" in again[0]
    (target / "stale").write_text("x")
    download_dataset(
        "movielens-1m", target, url=f"{base}/ml-1m.zip", sha256=sums["ml-1m.zip"], force=True
    )
    assert not (target / "stale").exists()
    assert _leftovers(tmp_path) == ["ml-1m"]


def test_a_wrong_checksum_is_refused_and_nothing_is_extracted(served, tmp_path):
    base, sums = served
    # the published MD5 of the real archive does not match the fixture
    with pytest.raises(
        CTRError, match=r"md5 checksum mismatch: expected " + ARCHIVES["movielens-1m"].md5
    ):
        download_dataset("movielens-1m", tmp_path / "ml-1m", url=f"{base}/ml-1m.zip")
    assert _leftovers(tmp_path) == []
    with pytest.raises(CTRError, match="sha256 checksum mismatch.*nothing was extracted"):
        download_dataset(
            "movielens-1m", tmp_path / "ml-1m", url=f"{base}/ml-1m.zip", sha256="0" * 64
        )
    assert _leftovers(tmp_path) == []
    with pytest.raises(CTRError, match="expected --sha256 as 64 hexadecimal digits"):
        download_dataset("movielens-1m", tmp_path / "ml-1m", sha256="abc")


def test_archives_without_the_files_or_not_zips_leave_nothing(served, tmp_path):
    base, sums = served
    with pytest.raises(CTRError, match=r"expected ratings\.dat, users\.dat, movies\.dat"):
        download_dataset(
            "movielens-1m", tmp_path / "d", url=f"{base}/wrong.zip", sha256=sums["wrong.zip"]
        )
    with pytest.raises(CTRError, match="not a zip archive"):
        download_dataset(
            "movielens-1m", tmp_path / "d", url=f"{base}/broken.zip", sha256=sums["broken.zip"]
        )
    assert _leftovers(tmp_path) == []


def test_unreachable_url_says_how_to_place_the_files_by_hand(tmp_path):
    url = _closed_port_url()
    with pytest.raises(CTRError) as info:
        download_dataset("movielens-1m", tmp_path / "ml-1m", url=url, timeout=5)
    message = str(info.value)
    assert f"could not download {url}" in message
    assert "unzip it and put ratings.dat, users.dat, movies.dat" in message
    assert str(tmp_path / "ml-1m") in message
    assert _leftovers(tmp_path) == []


def test_bad_names_and_occupied_directories(served, tmp_path):
    with pytest.raises(CTRError, match=r"expected a data set in \['movielens-100k'"):
        download_dataset("movielens-10m", tmp_path)
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(CTRError, match="does not hold the movielens-1m files.*--force"):
        download_dataset("movielens-1m", occupied, url=f"{served[0]}/ml-1m.zip")
    assert (occupied / "notes.txt").read_text() == "keep me"


def test_cli_download(served, tmp_path):
    base, sums = served
    runner = CliRunner()
    target = tmp_path / "ml-1m"
    args = ["data", "download", "movielens-1m", "--data-dir", str(target)]
    result = runner.invoke(
        main, [*args, "--url", f"{base}/ml-1m.zip", "--sha256", sums["ml-1m.zip"]]
    )
    assert result.exit_code == 0, result.output
    assert f"data.data_dir={target}" in result.output
    assert (target / "ratings.dat").is_file()
    result = runner.invoke(
        main, ["data", "download", "movielens-1m", "--data-dir", str(tmp_path / "x"), "--url",
               _closed_port_url()],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "could not download" in result.output and "Traceback" not in result.output
