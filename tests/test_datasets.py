"""Every official split format, parsed from files written in its official layout."""

from __future__ import annotations

import json

import pytest
from conftest import HMDB_CLASSES, UCF_CLASSES, make_hmdb51, make_ucf101

from beray.data.datasets import DatasetError, index_dataset, subset_names


def _indexed(name, root, **kw):
    """index_dataset, and subset_names (what a sweep's objective is checked against) agrees with it."""
    idx = index_dataset(name, root, **kw)
    assert sorted(subset_names(name, root)) == sorted(idx.subsets)
    return idx


def test_ucf101(tmp_path, tiny_video_bytes):
    counts = make_ucf101(tmp_path, tiny_video_bytes)
    idx = _indexed("ucf101", tmp_path, split=2)
    assert idx.classes == UCF_CLASSES
    assert {k: len(v) for k, v in idx.subsets.items()} == counts
    rec = next(r for r in idx.subsets["train"] if r.class_name == "YoYo")
    assert rec.label == 2  # classInd's 1-based 3 -> 0-based 2
    assert rec.path == str(tmp_path / "UCF-101" / "YoYo" / f"{rec.video_id}.avi")
    assert rec.video_id.startswith("v_YoYo_g03")
    assert {r.label for r in idx.subsets["test"]} == {0, 1, 2}  # test labels come from the folder


def test_ucf101_unknown_class_and_bad_split(tmp_path, tiny_video_bytes):
    make_ucf101(tmp_path, tiny_video_bytes)
    with pytest.raises(DatasetError, match="splits"):
        index_dataset("ucf101", tmp_path, split=4)
    (tmp_path / "ucfTrainTestlist" / "testlist01.txt").write_text("Nope/v_Nope_g01_c01.avi\n")
    with pytest.raises(DatasetError, match="'Nope'"):
        index_dataset("ucf101", tmp_path, split=1)


def test_hmdb51_tags_and_splits(tmp_path, tiny_video_bytes):
    counts = make_hmdb51(tmp_path, tiny_video_bytes)
    idx = _indexed("hmdb51", tmp_path, split=1)
    assert idx.classes == HMDB_CLASSES
    assert {k: len(v) for k, v in idx.subsets.items()} == counts
    assert sorted(r.video_id.split("_")[-1] for r in idx.subsets["test"] if r.label == 1) == ["2"]
    # split 2 rolls the tags: video 1 is the test one now, video 2 is unused
    idx2 = index_dataset("hmdb51", tmp_path, split=2)
    assert [r.video_id.split("_")[-1] for r in idx2.subsets["test"] if r.label == 0] == ["1"]
    assert all((tmp_path / r.class_name / f"{r.video_id}.avi").as_posix() == r.path for r in idx2.subsets["train"])
    assert index_dataset("actor-hmdb51", tmp_path).name == "actor-hmdb51"


def test_diving48(tmp_path):
    (tmp_path / "rgb").mkdir()
    train = [{"vid_name": "abc_00001", "label": 3, "start_frame": 0, "end_frame": 40},
             {"vid_name": "abc_00002", "label": 0, "start_frame": 40, "end_frame": 82}]
    test = [{"vid_name": "xyz_00007", "label": 3, "start_frame": 10, "end_frame": 30}]
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps(train))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps(test))
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"],
             ["Back", "15som", "25Twis", "FREE"], ["Back", "15som", "NoTwis", "PIKE"]]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    idx = _indexed("diving48", tmp_path)
    r = idx.subsets["train"][1]
    assert (r.label, r.start_frame, r.end_frame) == (0, 40, 82)
    assert r.path == str(tmp_path / "rgb" / "abc_00002.mp4")
    assert idx.subsets["test"][0].class_name == "Back / 15som / NoTwis / PIKE"
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "x"}]))
    with pytest.raises(DatasetError, match="Diving48_V2_test.json"):
        index_dataset("diving48", tmp_path)


def test_kinetics400_counts_missing_files(tmp_path, tiny_video_bytes):
    (tmp_path / "annotations").mkdir()
    rows = [("abseiling", "--07WQ2iBlw", 1, 11, "train"), ("air drumming", "-VtLx-mcPds", 0, 10, "train"),
            ("abseiling", "0Kqt3shkQB8", 30, 40, "train"), ("air drumming", "2K8ECnmI3Xs", 5, 15, "validate")]
    lines = ["label,youtube_id,time_start,time_end,split"] + [",".join(map(str, r)) for r in rows]
    (tmp_path / "annotations" / "train.csv").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "annotations" / "validate.csv").write_text("\n".join([lines[0], lines[4]]) + "\n")
    for label, yid, t0, t1, split in rows[:2] + rows[3:]:  # the third video was never downloaded
        f = tmp_path / split / label / f"{yid}_{t0:06d}_{t1:06d}.mp4"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(tiny_video_bytes["mp4"])
    idx = _indexed("kinetics400", tmp_path)
    assert idx.classes == ["abseiling", "air drumming"]
    assert {k: len(v) for k, v in idx.subsets.items()} == {"train": 2, "validate": 1}
    assert idx.missing == [str(tmp_path / "train" / "abseiling" / "0Kqt3shkQB8_000030_000040.mp4")]
    assert idx.subsets["validate"][0].label == 1
    assert idx.subsets["train"][0].video_id == "--07WQ2iBlw_000001_000011"


def test_manifest_with_and_without_header(tmp_path):
    (tmp_path / "train.csv").write_text("path,label,start_frame,end_frame,extra\na/x.mp4,1,5,25,z\n/abs/y.mp4,0,,,z\n")
    (tmp_path / "test.csv").write_text("b/z.avi,1\n")
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    idx = _indexed("manifest", tmp_path)
    assert list(idx.subsets) == ["train", "test"]
    x, y = idx.subsets["train"]
    assert (x.path, x.label, x.class_name, x.start_frame, x.end_frame) == (str(tmp_path / "a/x.mp4"), 1, "run", 5, 25)
    assert (y.path, y.start_frame) == ("/abs/y.mp4", None)
    assert idx.subsets["test"][0].path == str(tmp_path / "b/z.avi")
    # one CSV as the root, class names as labels
    (tmp_path / "named.csv").write_text("v1.mp4,swim\nv2.mp4,dive\nv3.mp4,swim\n")
    named = index_dataset("manifest", tmp_path / "named.csv")
    assert [(r.label, r.class_name) for r in named.subsets["named"]] == [(3, "swim"), (2, "dive"), (3, "swim")]


def test_manifest_bad_line_names_the_line(tmp_path):
    (tmp_path / "train.csv").write_text("path,label\nok.mp4,1\nbroken.mp4\n")
    with pytest.raises(DatasetError, match="line 3"):
        index_dataset("manifest", tmp_path)


def test_a_manifest_that_is_not_utf8_is_named_and_a_byte_order_mark_is_not_data(tmp_path):
    (tmp_path / "train.csv").write_bytes("path,label\ncaf\u00e9.mp4,1\n".encode("latin-1"))  # a spreadsheet's export
    with pytest.raises(DatasetError) as e:
        index_dataset("manifest", tmp_path)
    assert str(e.value) == f"{tmp_path / 'train.csv'}, line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"
    (tmp_path / "train.csv").write_bytes("\ufeffpath,label\ncaf\u00e9.mp4,1\n".encode("utf-8"))
    (record,) = index_dataset("manifest", tmp_path).subsets["train"]
    assert (record.path, record.label) == (str(tmp_path / "caf\u00e9.mp4"), 1)  # the header was read as one


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="choose one of"):
        index_dataset("ucf102", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        index_dataset("hmdb51", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="needs a root"):
        index_dataset("ucf101", None)
    with pytest.raises(DatasetError, match="classInd.txt"):
        index_dataset("ucf101", tmp_path)
