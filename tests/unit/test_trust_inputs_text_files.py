"""Text files a user gives that are not UTF-8: one UserError naming the file, the line and the byte."""

from __future__ import annotations

import os

import pytest
from cvgl.core.errors import UserError
from cvgl.core.path_errors import read_text_file
from cvgl.datasets.layouts import VIGOR_CITIES, list_images


def _vigor_splits(root, bad: str):
    for city in VIGOR_CITIES:
        d = root / "splits" / city
        d.mkdir(parents=True)
        listing = b"sat_0.png\n"
        if bad == "listing" and city == VIGOR_CITIES[0]:
            listing = b"sat_0.png\nsat_\xff1.png\n"
        (d / "satellite_list.txt").write_bytes(listing)
        label = b"g0.jpg sat_0.png 0 0 sat_0.png 0 0 sat_0.png 0 0 sat_0.png 0 0\n"
        if bad == "labels":
            label += b"g\xe91.jpg sat_0.png 0 0 sat_0.png 0 0 sat_0.png 0 0 sat_0.png 0 0\n"
        (d / "same_area_balanced_test.txt").write_bytes(label)


@pytest.mark.parametrize(("bad", "view", "file"), [
    ("listing", "satellite", "satellite_list.txt"),
    ("labels", "ground", "same_area_balanced_test.txt"),
])
def test_vigor_split_file_with_a_non_utf8_byte_is_named(tmp_path, bad, view, file):
    _vigor_splits(tmp_path, bad)
    with pytest.raises(UserError) as e:
        list_images("vigor", tmp_path, view, split="test", area="same")
    msg = str(e.value)
    assert "not UTF-8" in msg and file in msg and "line 2" in msg and "\n" not in msg


def test_read_text_file_refuses_a_fifo_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "names.txt")
    with pytest.raises(UserError, match="FIFO"):
        read_text_file(tmp_path / "names.txt", "names file", "give a text file")


def test_read_text_file_reads_utf8(tmp_path):
    (tmp_path / "a.txt").write_text("é\n", encoding="utf-8")
    assert read_text_file(tmp_path / "a.txt", "x", "y") == "é\n"
