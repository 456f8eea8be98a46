import hashlib
import json

import pandas as pd
import pytest

from lungct.atomic import atomic_dir, atomic_file, sha256_file, write_csv, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "old.txt").read_text() == "old"

    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("done")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    stale = tmp_path / ".out.tmp-99999"
    stale.mkdir()
    (tmp_path / ".model.keras.tmp-1.keras").write_text("partial")
    with atomic_dir(tmp_path / "out"):
        pass
    with atomic_file(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras"
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "out"]


def test_json_and_csv_are_stable(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": {"d": 2, "c": 3}})
    text = (tmp_path / "m.json").read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": {"c": 3, "d": 2}, "b": 1}
    write_csv(tmp_path / "t.csv", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "t.csv").read_bytes() == b"x\n1\n2\n"


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 9000  # over a read buffer
    (tmp_path / "f.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
