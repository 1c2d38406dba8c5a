"""Bad input to mkinitramfs.py, hermetically: each is one line on stderr and exit status 1,
and nothing is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit.builder import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    assert err.startswith("mkinitramfs.py: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("epoch", "message"), [
    ("4294967296", "SOURCE_DATE_EPOCH=4294967296: expected at most 4294967295"),
    ("9" * 5000, "SOURCE_DATE_EPOCH=" + "9" * 40 + ": expected at most"),
    ("-1", "SOURCE_DATE_EPOCH='-1': expected a whole number of seconds"),
    ("1e9", "SOURCE_DATE_EPOCH='1e9': expected a whole number of seconds"),
], ids=["2^32", "5000 digits", "negative", "float"])
def test_source_date_epoch_must_fit_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, epoch: str,
                                               message: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kmoddir", str(tmp_path))
    assert message in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []
