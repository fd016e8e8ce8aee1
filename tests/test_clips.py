import json

import numpy as np
import pytest

from jsa_retrieval.clips import LayoutError, detect_layout, read_dataset, read_id_list

from conftest import write_image, write_tone


def make_vggss(root, ids, annotations):
    for clip_id in ids:
        write_image(root / "frames" / f"{clip_id}.jpg")
        write_tone(root / "audio" / f"{clip_id}.wav")
    (root / "vggss.json").write_text(json.dumps(annotations))


def test_vggss_reader_loads_classes_boxes_and_clips_corrupt_values(tmp_path):
    ids = ["zpWuikVorYg_000032", "abc_000010", "def_000020"]
    annotations = [
        {"file": ids[0], "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
        {"file": ids[1], "class": "cat", "bbox": [[-2.88e16, 0.1, 0.5, 1.7], [0.3, 0.3, 0.3, 0.3]]},
        {"file": ids[2], "class": "cat", "bbox": [[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]},
    ]
    make_vggss(tmp_path, ids, annotations)
    (tmp_path / "vggss_test.csv").write_text("\n".join(ids[:2] + ["missing_000001"]) + "\n")
    collection = read_dataset(tmp_path, split="test")
    assert collection.layout == "vggss"
    assert [c.id for c in collection.clips] == ids[:2]
    assert collection.missing == ["missing_000001"]
    first, second = collection.clips
    assert first.label == "dog barking" and first.gt_kind == "boxes"
    np.testing.assert_allclose(first.boxes, [[0.1, 0.2, 0.5, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(second.boxes[0], [0.0, 0.1, 0.5, 1.0], rtol=1e-6)
    assert second.boxes.shape == (2, 4)
    everything = read_dataset(tmp_path)
    assert sorted(c.id for c in everything.clips) == sorted(ids)


def test_vggss_image_050_variant(tmp_path):
    write_image(tmp_path / "vid_000001" / "image_050.jpg")
    write_tone(tmp_path / "vid_000001" / "audio.wav")
    collection = read_dataset(tmp_path)
    assert collection.layout == "vggss"
    assert collection.clips[0].image.name == "image_050.jpg"


def test_vggsound_csv_rows_become_ids(tmp_path):
    path = tmp_path / "vggsound.csv"
    path.write_text("---g-f_I2yQ,1,people marching,test\nzpWuikVorYg,32,dog,train\n")
    assert read_id_list(path) == ["---g-f_I2yQ_000001", "zpWuikVorYg_000032"]


def test_flickr_reader_reads_three_annotators(tmp_path):
    write_image(tmp_path / "frames" / "1001.jpg")
    write_tone(tmp_path / "audio" / "1001.wav")
    xml = "<annotation>" + "".join(
        f"<object><bbox><name>x</name><xmin>{10 + i}</xmin><ymin>20</ymin><xmax>100</xmax><ymax>120</ymax></bbox></object>"
        for i in range(3)
    ) + "</annotation>"
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "1001.xml").write_text(xml)
    collection = read_dataset(tmp_path)
    assert collection.layout == "flickr"
    clip = collection.clips[0]
    assert clip.gt_kind == "soft_boxes"
    assert len(clip.flickr_boxes) == 3
    np.testing.assert_array_equal(clip.flickr_boxes[2], [[12, 20, 100, 120]])


def test_avsbench_reader_pairs_frames_masks_audio(tmp_path):
    for k in (1, 2):
        write_image(tmp_path / "visual_frames" / "dog" / "vidA" / f"vidA_{k}.png")
        write_image(tmp_path / "gt_masks" / "dog" / "vidA" / f"vidA_{k}.png", mode="L")
    write_tone(tmp_path / "audio_wavs" / "dog" / "vidA.wav")
    collection = read_dataset(tmp_path)
    assert collection.layout == "avsbench"
    assert [c.id for c in collection.clips] == ["vidA_1", "vidA_2"]
    assert collection.clips[0].label == "dog" and collection.clips[0].gt_kind == "mask"


def _avsbench_s4_tree(root):
    """AVSBench S4 as released: s4_meta_data.csv, {visual_frames,audio_wav,gt_masks}/<split>/<category>/..."""
    rows = ["name,category,split"]
    for split, name, category in (("train", "vidT", "dog"), ("val", "vidV", "cat"), ("test", "vidX", "dog")):
        rows.append(f"{name},{category},{split}")
        write_image(root / "s4_data" / "visual_frames" / split / category / name / f"{name}_1.png")
        write_image(root / "s4_data" / "gt_masks" / split / category / name / f"{name}_1.png", mode="L")
        write_tone(root / "s4_data" / "audio_wav" / split / category / f"{name}.wav")
    (root / "s4_meta_data.csv").write_text("\n".join(rows) + "\n")


def test_avsbench_split_comes_from_the_metadata_csv(tmp_path):
    _avsbench_s4_tree(tmp_path)
    assert [c.id for c in read_dataset(tmp_path, split="test").clips] == ["vidX_1"]
    assert [c.id for c in read_dataset(tmp_path, split="val").clips] == ["vidV_1"]
    assert read_dataset(tmp_path, split="test").clips[0].label == "dog"
    assert len(read_dataset(tmp_path).clips) == 3
    with pytest.raises(LayoutError, match="split"):
        read_dataset(tmp_path, split="everything")


def test_avsbench_split_without_metadata_uses_the_split_folder(tmp_path):
    _avsbench_s4_tree(tmp_path)
    (tmp_path / "s4_meta_data.csv").unlink()
    assert [c.id for c in read_dataset(tmp_path, split="train").clips] == ["vidT_1"]


def test_folder_reader_pairs_by_stem_and_reports_unpaired(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_tone(tmp_path / "a.wav")
    write_image(tmp_path / "sub" / "b.png")
    write_tone(tmp_path / "sub" / "b.flac")
    write_image(tmp_path / "lonely.jpg")
    collection = read_dataset(tmp_path)
    assert collection.layout == "folder"
    assert [c.id for c in collection.clips] == ["a", "sub/b"]
    assert collection.missing == ["lonely"]


def test_unknown_layout_lists_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LayoutError, match="notes.txt.*expected frames/"):
        detect_layout(tmp_path)
    with pytest.raises(LayoutError, match="not a folder"):
        detect_layout(tmp_path / "nope")
