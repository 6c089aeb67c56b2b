"""``photoclust hash``: PDQ hashes of real image files (made here with Pillow)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from streams.cli import main
from streams.hash_cli import escape_id

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def run(*args: object) -> Result:
    return CliRunner().invoke(main, ["hash", *[str(a) for a in args]])


def lines_of(result: Result) -> dict[str, str]:
    """``id -> hex`` from the id,hex lines on stdout (checking their format)."""
    out = {}
    for line in result.stdout.splitlines():
        id_, sep, hex_ = line.partition(",")
        assert sep and "," not in hex_, line
        assert HEX64.match(hex_), line
        out[id_] = hex_
    return out


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_hashes_images_and_reports_failures(images: Path, pdq: None) -> None:
    result = run(images)
    assert result.exit_code == 1, result.output
    hashes = lines_of(result)
    good = {images / "one.png", images / "two.png", images / "sub" / "one_again.png", images / "sub" / "one.jpg"}
    assert set(hashes) == {str(p) for p in good}
    # The failed files are named on stderr, and nowhere on stdout.
    for bad in ("notes.txt", "broken.jpg"):
        assert str(images / bad) in result.stderr
        assert bad not in result.stdout
    assert "2 of 6 files could not be hashed" in result.stderr


def test_identical_images_identical_hashes(images: Path, pdq: None) -> None:
    hashes = lines_of(run("-q", images / "one.png", images / "sub" / "one_again.png", images / "two.png",
                          images / "sub" / "one.jpg"))
    one, again, two, jpeg = (hashes[str(p)] for p in (images / "one.png", images / "sub" / "one_again.png",
                                                     images / "two.png", images / "sub" / "one.jpg"))
    assert one == again
    assert distance(one, jpeg) <= 31  # a JPEG re-encode is a PDQ match
    assert distance(one, two) > 31  # a different picture is not


def test_all_good_files_exit_zero_and_header(images: Path, pdq: None, tmp_path: Path) -> None:
    out = tmp_path / "out" / "hashes.csv"
    out.parent.mkdir()
    result = run("-q", "--header", "-o", out, images / "one.png", images / "two.png")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "id,hex"
    assert [line.split(",")[0] for line in lines[1:]] == [str(images / "one.png"), str(images / "two.png")]
    assert all(HEX64.match(line.split(",")[1]) for line in lines[1:])


def test_output_reads_back_as_codes(images: Path, pdq: None, tmp_path: Path) -> None:
    from streams.files import read_codes

    out = tmp_path / "h.csv"
    result = run("-q", "--header", "-o", out, images / "one.png", images / "two.png", images / "sub")
    assert result.exit_code == 0, result.output
    data = read_codes(out, 256)
    assert len(data) == 4 and data.n_bits == 256


def test_missing_path_is_reported(images: Path, pdq: None) -> None:
    result = run("-q", images / "one.png", images / "nope.png")
    assert result.exit_code == 1
    assert str(images / "nope.png") in result.stderr
    assert len(lines_of(result)) == 1


def test_hidden_files_in_folders_are_skipped(images: Path, pdq: None) -> None:
    hidden = images / "sub" / ".thumbs"
    hidden.mkdir()
    (hidden / "junk.bin").write_bytes(b"junk")
    result = run("-q", images / "sub")
    assert result.exit_code == 0, result.output
    assert len(lines_of(result)) == 2


def test_empty_folder_is_a_usage_error(tmp_path: Path, pdq: None) -> None:
    pytest.importorskip("PIL", reason="Pillow is not installed")
    result = run(tmp_path)
    assert result.exit_code == 2
    assert "no files found" in result.stderr


def test_missing_pdqhash_fails_clearly(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pdqhash", None)  # makes "import pdqhash" raise ImportError
    result = run(images / "one.png")
    assert result.exit_code == 1
    assert "pdqhash" in result.stderr and "pip install pdqhash" in result.stderr
    assert result.stdout == ""


def test_escape_id() -> None:
    assert escape_id("photos/a.jpg") == "photos/a.jpg"
    assert escape_id("a,b%c.jpg") == "a%2Cb%25c.jpg"
    assert escape_id("#x.jpg") == "%23x.jpg"
    assert escape_id(" x .jpg ") == "%20x .jpg%20"
    assert escape_id("a\nb\tc") == "a%0Ab%09c"
