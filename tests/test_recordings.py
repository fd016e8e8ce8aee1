"""evaluate_recordings: the arithmetic on a fake engine with known hits, a real run on the tiny index, and the
archive members (zip, Qt .rcc) the second-source mapping reads recordings from."""
import csv
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from evaluation.archive_members import ArchiveError, MemberMissing, rcc_members, read_member, read_rcc_member
from evaluation.recordings import SECOND_SOURCE, MappingError, SourceMissing, evaluate_recordings, read_mapping
from jsa_retrieval.decode import DecodeError
from jsa_retrieval.realsound import CLASSES

def write_mapping(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["package", "version", "path", "class", "note"])
        writer.writerows([("pkg", "1.0", row_path, label, "") for row_path, label in rows])
    return path


class FakeEngine:
    """search_audio answers from the query file's text: labels separated by spaces ('-' for no label)."""

    def __init__(self, labels):
        self.indexes = SimpleNamespace(store=SimpleNamespace(labels=lambda: labels))
        self.queries = []

    def search_audio(self, path, k=10):
        text = Path(path).read_text()
        self.queries.append(text)
        if text == "broken":
            raise DecodeError(f"{path}: cannot read audio (simulated\nbreakage)")
        hits = [SimpleNamespace(label=None if label == "-" else label) for label in text.split()][:k]
        return SimpleNamespace(hits=hits)


def test_scores_match_hand_computed_numbers(tmp_path):
    source = tmp_path / "x"
    source.mkdir()
    (source / "a.wav").write_text("dog cat dog dog extra")  # k=4: right, P 3/4
    (source / "b.wav").write_text("cat dog cat bird")  # wrong, P 1/4
    (source / "c.wav").write_text("cat cat cat cat")  # right, P 1
    (source / "broken.wav").write_text("broken")
    with zipfile.ZipFile(source / "d.zip", "w") as bundle:
        bundle.writestr("inner/e.wav", "dog bird bird -")  # wrong, P 2/4
    mapping = write_mapping(tmp_path / "map.csv", [
        ("a.wav", "dog"), ("b.wav", "dog"), ("c.wav", "cat"), ("d.zip!inner/e.wav", "bird"),
        ("missing.wav", "cat"), ("d.zip!inner/absent.wav", "bird"), ("broken.wav", "dog")])
    engine = FakeEngine(["dog", "dog", "cat", "bird", ""])

    report = evaluate_recordings(engine, mapping, source, k=4, out_dir=tmp_path / "out")

    assert [r.correct for r in report.results] == [True, False, True, False]
    assert [r.precision for r in report.results] == [0.75, 0.25, 1.0, 0.5]
    assert report.results[3].hit_labels == ["dog", "bird", "bird", None]
    assert report.top1 == 0.5 and report.precision == pytest.approx(0.625)
    assert [(s.label, s.n, s.top1, s.precision) for s in report.by_class()] == [
        ("bird", 1, 0.0, 0.5), ("cat", 1, 1.0, 1.0), ("dog", 2, 0.5, 0.5)]
    assert report.class_top1 == pytest.approx(0.5) and report.class_precision == pytest.approx(2 / 3)
    assert report.index_classes == ["bird", "cat", "dog"] and report.chance == pytest.approx(1 / 3)
    assert [(s.path, s.kind) for s in report.skipped] == [
        ("missing.wav", "missing"), ("d.zip!inner/absent.wav", "missing"), ("broken.wav", "unreadable")]
    assert all("\n" not in s.reason for s in report.skipped)

    saved = json.loads((tmp_path / "out" / "recordings.json").read_text())
    assert saved["n"] == 4 and saved["n_skipped"] == 3 and saved["top1"] == 0.5 and saved["meta"]["title"]
    assert saved["by_class"][2] == {"label": "dog", "n": 2, "top1": 0.5, "precision": 0.5}
    markdown = (tmp_path / "out" / "recordings.md").read_text()
    assert markdown == report.to_markdown()
    assert "| dog | 2 | 50.0 | 50.0 |" in markdown and "| all recordings | 4 | 50.0 | 62.5 |" in markdown
    assert "missing.wav (missing)" in markdown and not list((tmp_path / "out").glob(".*tmp*"))


def test_a_class_the_index_lacks_is_named_and_k_is_checked(tmp_path):
    (tmp_path / "a.wav").write_text("dog")
    mapping = write_mapping(tmp_path / "map.csv", [("a.wav", "owl")])
    report = evaluate_recordings(FakeEngine(["dog"]), mapping, tmp_path, k=10)
    assert report.results[0].precision == 0.0 and report.unknown_classes() == ["owl"]
    assert "no clip of: owl" in report.to_markdown()
    with pytest.raises(ValueError, match="k must be"):
        evaluate_recordings(FakeEngine(["dog"]), mapping, tmp_path, k=0)
    with pytest.raises(SourceMissing, match="apt-get download gcompris-qt-data"):
        evaluate_recordings(FakeEngine(["dog"]), mapping, tmp_path / "nowhere")


def test_a_bad_mapping_is_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text("path,class\na.wav,dog\n")
    with pytest.raises(MappingError, match="no column package, version, note"):
        read_mapping(tmp_path / "bad.csv")
    with pytest.raises(MappingError, match="cannot read mapping"):
        read_mapping(tmp_path / "absent.csv")


def test_real_run_on_the_tiny_index_gives_the_engines_own_hits(engine, tmp_path):
    """A copy of an indexed clip's audio and another inside a zip are each scored by exactly the hits the engine
    gives the original file; a file that does not decode is skipped."""
    store = engine.indexes.store
    audio_paths, labels = store.column("audio_paths"), store.labels()
    source = tmp_path / "x"
    (source / "clips").mkdir(parents=True)
    shutil.copy(audio_paths[0], source / "clips" / "zero.wav")
    with zipfile.ZipFile(source / "bundle.zip", "w") as bundle:
        bundle.write(audio_paths[7], "sounds/seven.wav")
    (source / "clips" / "broken.wav").write_bytes(b"RIFF broken")
    mapping = write_mapping(tmp_path / "map.csv", [
        ("clips/zero.wav", labels[0]), ("bundle.zip!sounds/seven.wav", labels[7]), ("clips/broken.wav", labels[0])])

    report = evaluate_recordings(engine, mapping, source, k=5)

    assert [(s.path, s.kind) for s in report.skipped] == [("clips/broken.wav", "unreadable")]
    assert report.index_classes == sorted(set(labels)) and report.chance == 1 / len(set(labels))
    assert len(report.results) == 2
    for result, original in zip(report.results, (audio_paths[0], audio_paths[7])):
        expected = [hit.label for hit in engine.search_audio(Path(original), k=5).hits]
        assert result.hit_labels == expected and len(expected) == 5
        assert result.correct == (expected[0] == result.label)
        assert result.precision == sum(label == result.label for label in expected) / 5


def test_the_shipped_mapping_names_realsound_classes():
    rows = read_mapping(SECOND_SOURCE)
    assert len(rows) >= 40 and {row.label for row in rows} <= set(CLASSES)
    assert len({row.label for row in rows}) >= 8 and len({row.path for row in rows}) == len(rows)
    assert {row.package for row in rows} & {"tuxpaint-stamps-default"} == set()


# ---------------------------------------------------------------------------------------------- archive members
def rcc_bundle(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """A Qt resource bundle as rcc writes it: one folder 'a' holding `files` (name -> (bytes, zlib-compressed))."""
    names, data = b"", b""

    def name(text):
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return offset

    node = lambda *fields: struct.pack(*fields) + (b"" if version == 1 else bytes(8))  # noqa: E731
    tree = [node(">IHII", 0, 2, 1, 1), node(">IHII", name("a"), 2, len(files), 2)]
    for file_name, (content, compressed) in files.items():
        payload = struct.pack(">I", len(content)) + zlib.compress(content) if compressed else content
        tree.append(node(">IHHHI", name(file_name), int(compressed), 0, 0, len(data)))
        data += struct.pack(">I", len(payload)) + payload
    header = 24 if version >= 3 else 20
    fields = [b"qres", version, header + len(data) + len(names), header, header + len(data)]
    return struct.pack(">4sIIII", *fields) + (b"\0\0\0\0" if version >= 3 else b"") + data + names + b"".join(tree)


@pytest.mark.parametrize("version", [1, 3])
def test_rcc_members_are_read_stored_and_compressed(version):
    blob = rcc_bundle({"x.wav": (b"RIFF stored", False), "y.txt": (b"squeezed " * 20, True)}, version)
    assert sorted(rcc_members(blob)) == ["a/x.wav", "a/y.txt"]
    assert read_rcc_member(blob, "a/x.wav") == b"RIFF stored"
    assert read_rcc_member(blob, "a/y.txt") == b"squeezed " * 20


def test_archive_errors_are_one_line(tmp_path):
    (tmp_path / "b.rcc").write_bytes(rcc_bundle({"x.wav": (b"RIFF", False)}))
    assert read_member(tmp_path / "b.rcc", "a/x.wav") == b"RIFF"
    with pytest.raises(MemberMissing, match="no member a/z.wav"):
        read_member(tmp_path / "b.rcc", "a/z.wav")
    (tmp_path / "junk.rcc").write_bytes(b"not a bundle")
    with pytest.raises(ArchiveError, match="not a Qt resource bundle"):
        read_member(tmp_path / "junk.rcc", "a/x.wav")
    (tmp_path / "cut.rcc").write_bytes(rcc_bundle({"x.wav": (b"RIFF", False)})[:30])
    with pytest.raises(ArchiveError, match="cannot read"):
        read_member(tmp_path / "cut.rcc", "a/x.wav")
