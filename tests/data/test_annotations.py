"""Annotation formats, finding files by name under the root, class lists."""

import logging
import os

import pytest

from video_swin.data import class_names, read_annotations
from video_swin.data.annotations import (
    Annotations,
    build_classes,
    resolve_labels,
    scan_videos,
)
from video_swin.errors import AnnotationError, ConfigError

HEADER = "label,youtube_id,time_start,time_end,split\n"


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_kinetics_csv_finds_files_in_any_layout(tmp_path):
    root = tmp_path / "k400"
    a = _touch(root / "train" / "air drumming" / "aaaaaaaaaaa_000010_000020.mp4")  # class folder with a space
    b = _touch(root / "flat" / "bbbbbbbbbbb_000000_000010.webm")  # flat folder, other extension
    c = _touch(root / "ccccccccccc.mp4")  # downloader that keeps only the id
    csv = tmp_path / "train.csv"
    csv.write_text(
        HEADER
        + "air drumming,aaaaaaaaaaa,10,20,train\n"
        + '"playing cards, poker",bbbbbbbbbbb,0.0,10.0,train\n'
        + "abseiling,ccccccccccc,3,13,train\n"
    )
    ann = read_annotations(csv, root)
    assert [r.path for r in ann.records] == [str(a), str(b), str(c)]
    assert [r.label for r in ann.records] == ["air drumming", "playing cards, poker", "abseiling"]
    assert ann.classes == ["abseiling", "air drumming", "playing cards, poker"]
    assert resolve_labels(ann.records, ann.classes) == [1, 2, 0]
    assert class_names(csv) == ann.classes


def test_missing_rows_are_reported_and_skipped(tmp_path, caplog):
    root = tmp_path / "data"
    _touch(root / "x" / "present0000_000000_000010.mp4")
    csv = tmp_path / "val.csv"
    rows = ["a,present0000,0,10,val"] + [f"b,gone{i:07d},0,10,val" for i in range(7)]
    csv.write_text(HEADER + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        ann = read_annotations(csv, root)
    assert len(ann.records) == 1 and len(ann.missing) == 7
    assert ann.classes == ["a", "b"]  # classes come from every row, found or not
    message = caplog.records[-1].getMessage()
    assert "7 of 8 videos" in message and "gone0000000_000000_000010.mp4" in message


def test_nothing_found_is_an_error(tmp_path):
    (tmp_path / "root").mkdir()
    csv = tmp_path / "t.csv"
    csv.write_text(HEADER + "a,zzz,0,10,train\n")
    with pytest.raises(FileNotFoundError, match="none of the 1 videos"):
        read_annotations(csv, tmp_path / "root")


def test_same_name_in_two_splits_prefers_the_rows_split(tmp_path):
    root = tmp_path / "k"
    _touch(root / "train" / "dupdupdupdu_000000_000010.mp4")
    val = _touch(root / "val" / "dupdupdupdu_000000_000010.mp4")
    csv = tmp_path / "val.csv"
    csv.write_text(HEADER + "a,dupdupdupdu,0,10,val\n")
    assert read_annotations(csv, root).records[0].path == str(val)


def test_mmaction_list_with_classes_txt(tmp_path):
    root = tmp_path / "videos"
    a = _touch(root / "sub dir" / "one.mp4")
    b = _touch(root / "elsewhere" / "two.mp4")  # listed under another folder: found by name
    ann_dir = tmp_path / "ann"
    ann_dir.mkdir()
    (ann_dir / "classes.txt").write_text("first class\nsecond class\nthird class\n")
    (ann_dir / "train_list.txt").write_text("sub dir/one.mp4 2\nmoved/two.mp4 0\n\n")
    ann = read_annotations(ann_dir / "train_list.txt", root)
    assert [(r.path, r.label) for r in ann.records] == [(str(a), 2), (str(b), 0)]
    assert ann.classes == ["first class", "second class", "third class"]
    assert resolve_labels(ann.records, ann.classes) == [2, 0]
    assert class_names(ann_dir / "train_list.txt") == ann.classes


def test_mmaction_list_without_classes_txt_uses_indices(tmp_path):
    _touch(tmp_path / "v" / "a.mp4")
    _touch(tmp_path / "v" / "b.mp4")
    (tmp_path / "list.txt").write_text("v/a.mp4 3\nv/b.mp4 1\n")
    ann = read_annotations(tmp_path / "list.txt")  # root defaults to the list's folder
    assert ann.classes == ["0", "1", "2", "3"]
    assert resolve_labels(ann.records, ann.classes) == [3, 1]


def test_malformed_mmaction_line(tmp_path):
    (tmp_path / "list.txt").write_text("just_a_path.mp4\n")
    with pytest.raises(ValueError, match="list.txt:1"):
        read_annotations(tmp_path / "list.txt")


def test_class_per_folder_tree(tmp_path):
    root = tmp_path / "tree"
    _touch(root / "brushing teeth" / "x.mp4")
    _touch(root / "brushing teeth" / "deeper" / "y.avi")
    _touch(root / "yawning" / "z.mkv")
    _touch(root / "yawning" / "notes.txt")
    (root / "empty class").mkdir()
    ann = read_annotations(None, root)
    assert ann.classes == ["brushing teeth", "yawning"]
    assert [r.label for r in ann.records] == ["brushing teeth", "brushing teeth", "yawning"]
    assert read_annotations(root).classes == ann.classes


def test_unseen_label_at_evaluation_is_an_error_naming_it(tmp_path):
    _touch(tmp_path / "r" / "idididididi_000000_000010.mp4")
    csv = tmp_path / "val.csv"
    csv.write_text(HEADER + "juggling fire,idididididi,0,10,val\n")
    ann = read_annotations(csv, tmp_path / "r")
    with pytest.raises(ValueError, match="'juggling fire'"):
        resolve_labels(ann.records, build_classes(ann, ["abseiling", "yawning"]), str(csv))


def test_class_list_from_a_file_or_a_list(tmp_path):
    (tmp_path / "names.txt").write_text("b\na\n")
    fake = Annotations(records=[], classes=["z"])
    assert build_classes(fake, tmp_path / "names.txt") == ["b", "a"]
    assert build_classes(fake, ["q", "r"]) == ["q", "r"]
    assert build_classes(fake) == ["z"]
    with pytest.raises(ValueError, match="duplicate"):
        build_classes(fake, ["q", "q"])


def test_scan_is_cached_per_root(tmp_path):
    _touch(tmp_path / "a.mp4")
    first = scan_videos(tmp_path)
    _touch(tmp_path / "b.mp4")
    assert scan_videos(tmp_path) is first
    assert "b" in scan_videos(tmp_path, refresh=True).by_stem


def test_a_list_of_files_gives_unlabelled_records_in_order(tmp_path):
    files = [tmp_path / "b.mp4", str(tmp_path / "a clip.webm"), tmp_path / "missing.mp4"]
    parsed = read_annotations(files)
    assert [r.path for r in parsed.records] == [str(f) for f in files]  # taken as given, not looked for
    assert all(r.label is None for r in parsed.records) and parsed.classes == [] and parsed.missing == []


# -- files as other tools save them, and rows that cannot be used as they are ---------------------

ROWS = ["air drumming,aaaaaaaaaaa,10,20,train", "yawning,bbbbbbbbbbb,0,10,train"]


@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_kinetics_csv_with_a_byte_order_mark_or_crlf_reads_every_label(tmp_path, bom, newline):
    root = tmp_path / "k"
    _touch(root / "aaaaaaaaaaa_000010_000020.mp4")
    _touch(root / "bbbbbbbbbbb_000000_000010.mp4")
    csv = tmp_path / "train.csv"
    text = newline.join([HEADER.strip(), *ROWS]) + newline
    csv.write_bytes(("\ufeff" if bom else "").encode() + text.encode())  # Excel's "CSV UTF-8" starts with EF BB BF
    assert csv.read_bytes().startswith(b"\xef\xbb\xbf") == bom and (b"\r\n" in csv.read_bytes()) == (newline == "\r\n")
    ann = read_annotations(csv, root)
    assert [r.label for r in ann.records] == ["air drumming", "yawning"]  # measured with a BOM: all empty
    assert ann.classes == class_names(csv) == ["air drumming", "yawning"]
    assert resolve_labels(ann.records, ann.classes) == [0, 1]


def test_mmaction_list_and_class_file_with_a_byte_order_mark_and_crlf(tmp_path):
    _touch(tmp_path / "v" / "a.mp4")
    _touch(tmp_path / "v" / "b.mp4")
    (tmp_path / "classes.txt").write_bytes("\ufeffjumping\r\nrunning\r\n".encode())
    (tmp_path / "list.txt").write_bytes("\ufeffv/a.mp4 1\r\nv/b.mp4 0\r\n".encode())
    ann = read_annotations(tmp_path / "list.txt")
    assert ann.classes == ["jumping", "running"] and [r.label for r in ann.records] == [1, 0]


@pytest.mark.parametrize("labels,which", [(["", " "], "every row"), (["yawning", ""], "1 of 2 rows")])
def test_empty_labels_are_an_error_naming_the_file(tmp_path, labels, which):
    _touch(tmp_path / "k" / "aaaaaaaaaaa.mp4")
    _touch(tmp_path / "k" / "bbbbbbbbbbb.mp4")
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + f"{labels[0]},aaaaaaaaaaa,0,10,train\n{labels[1]},bbbbbbbbbbb,0,10,train\n")
    for read in (lambda: read_annotations(csv, tmp_path / "k"), lambda: class_names(csv)):
        with pytest.raises(AnnotationError, match=f"{csv}: the label column is empty in {which}") as info:
            read()  # measured: 0 classes, then "IndexError: Target -1 is out of bounds" in training
        assert isinstance(info.value, ConfigError)


def test_a_csv_without_a_label_column_is_an_error_naming_it(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\naaaaaaaaaaa,0,10,test\n")
    with pytest.raises(AnnotationError, match=r"test.csv: not a Kinetics CSV; needs columns \['label'"):
        read_annotations(csv, tmp_path)


def test_unreadable_rows_name_the_file_and_line(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + "a,aaaaaaaaaaa,0,10,train\na,bbbbbbbbbbb,start,10,train\n")
    with pytest.raises(AnnotationError, match="train.csv:3: time_start and time_end must be numbers"):
        read_annotations(csv, tmp_path)
    csv.write_bytes(HEADER.encode() + "caf\u00e9,aaaaaaaaaaa,0,10,train\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match="train.csv: not UTF-8 text"):
        read_annotations(csv, tmp_path)


def test_an_id_matching_several_files_is_an_error_listing_them(tmp_path):
    root = tmp_path / "k"
    first = _touch(root / "train" / "a" / "dupdupdupdu_000000_000010.mp4")
    second = _touch(root / "copy" / "a" / "dupdupdupdu_000000_000010.mp4")  # neither under the row's split "val"
    other_ext = _touch(root / "train" / "b" / "twotwotwotw.mp4")
    webm = _touch(root / "train" / "b" / "twotwotwotw.webm")
    _touch(root / "train" / "b" / "oneoneoneon_000000_000010.mp4")
    csv = tmp_path / "val.csv"
    csv.write_text(HEADER + "a,dupdupdupdu,0,10,val\nb,twotwotwotw,0,10,val\nb,oneoneoneon,0,10,val\n")
    with pytest.raises(AnnotationError, match="val.csv: 2 row") as info:
        read_annotations(csv, root)  # measured: one of the files was picked silently
    message = str(info.value)
    assert all(str(p) in message for p in (first, second, other_ext, webm)) and "oneoneoneon" not in message
    assert "\n" not in message


def test_one_file_under_two_names_is_not_ambiguous(tmp_path):
    root = tmp_path / "k"
    real = _touch(root / "train" / "a" / "lnklnklnkln_000000_000010.mp4")
    (root / "links").mkdir()
    os.symlink(real, root / "links" / real.name)
    csv = tmp_path / "train.csv"
    csv.write_text(HEADER + "a,lnklnklnkln,0,10,train\n")
    assert read_annotations(csv, root).records[0].path == str(real)


def test_mmaction_name_matching_several_files_is_an_error(tmp_path):
    _touch(tmp_path / "v" / "x" / "clip.mp4")
    _touch(tmp_path / "v" / "y" / "clip.mp4")
    _touch(tmp_path / "v" / "z" / "exact.mp4")
    (tmp_path / "list.txt").write_text("moved/clip.mp4 0\nv/z/exact.mp4 1\n")
    with pytest.raises(AnnotationError, match=r"list.txt: 1 row\(s\) match several files .*'moved/clip.mp4' matches"):
        read_annotations(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text("v/x/clip.mp4 0\nv/z/exact.mp4 1\n")  # a path as written decides
    assert len(read_annotations(tmp_path / "list.txt").records) == 2
