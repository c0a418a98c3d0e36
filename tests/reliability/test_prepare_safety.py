"""``video-swin prepare``: never a hang, never a source file touched, a journal that forgets nothing wrong.

Issue 28, items 2, 3, 7 (prepare's part) and 9, and the smaller prepare items. Every video here is
real: tiny H.264 files written through PyAV. Every test that could lose data snapshots the user's
source folder and asserts every byte is still there afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.video_files import textured_frames, write_mp4
from video_swin.cli import main as cli_main
from video_swin.data.prepare import prepare

REPO = Path(__file__).resolve().parents[2]
NAMES = {"train": {"walk": ["w1", "w2"], "run": ["r1"]}}


def make_src(root: Path, layout: dict = NAMES, frames: int = 16, size: tuple[int, int] = (48, 64)) -> Path:
    """A class-folder dataset of tiny real videos: ``root/{split}/{label}/{name}.mp4``."""
    for split, classes in layout.items():
        for label, names in classes.items():
            for name in names:
                write_mp4(root / split / label / f"{name}.mp4", textured_frames(frames, *size, seed=sum(map(ord, name))),
                          gop=8, crf=23)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_src(tmp_path_factory.mktemp("user") / "videos")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) with its bytes; links as their target text."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(folder))] = f"-> {os.readlink(path)}".encode()
        elif path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
        else:
            files[str(path.relative_to(folder))] = b"<dir>"
    return files


def cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    """``video-swin prepare ...`` in this process: (exit code, stderr lines without progress bars, stdout)."""
    try:
        code = cli_main(["prepare", *argv])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("prepare:")]
    return code, lines, captured.out


def one_line_error(lines: list[str]) -> str:
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


# -- item 9: no hang after the caller decoded video -----------------------------------------------


def test_prepare_after_decoding_with_every_backend_does_not_hang(source, tmp_path):
    """A forked worker deadlocked in libswscale's teardown after the caller had decoded video."""
    import av

    from video_swin.data import get_decoder
    from video_swin.data.decoders import decord_available, torchcodec_available

    video = source / "train" / "walk" / "w1.mp4"
    with av.open(str(video)) as container:  # FFmpeg's frame threads and a scaler, in this process
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.reformat(32, 24, "rgb24")
    backends = ["pyav"] + [name for name, ok in (("decord", decord_available()), ("torchcodec", torchcodec_available()))
                           if ok]  # fmt: skip
    for backend in backends:
        assert get_decoder(backend).get_frames(video, list(range(12))).shape[0] == 12
    started = time.monotonic()
    counts = prepare(source, tmp_path / "out", short_side=32, keyframe_interval=4, jobs=2, timeout=30)
    took = time.monotonic() - started
    assert counts == {"prepared": 3, "broken": 0, "failed": 0}, (tmp_path / "out" / "broken.csv").read_text()
    assert took < 30, f"prepare took {took:.0f} s after decoding with {backends}"


# -- item 2: the source is never touched ----------------------------------------------------------


def _refusal_cases(src: Path, tmp: Path) -> list[tuple[str, str, str]]:
    link = tmp / "link-to-src"
    if not link.exists():
        link.symlink_to(src)
    outer = tmp / "outer"
    if not outer.exists():
        shutil.copytree(src, outer / "inner")
    return [
        (str(src), str(src), "is SRC"),
        (str(src), str(src / "train" / "prepared"), "inside SRC"),
        (str(src / "train" / ".."), str(src / "prepared"), "inside SRC"),
        (str(src), str(link), "is SRC"),  # the same folder through a link
        (str(src), str(link / "train" / "prepared"), "inside SRC"),
        (str(outer / "inner"), str(outer), "SRC"),  # SRC inside OUT
    ]


@pytest.mark.parametrize("case", range(6))
def test_out_equal_to_inside_or_around_src_is_refused(source, tmp_path, capsys, case):
    src, out, words = _refusal_cases(source, tmp_path)[case]
    watched = Path(out) if case == 5 else source
    before = snapshot(watched)
    code, lines, _ = cli(capsys, src, out, "--short-side", "32", "--jobs", "1")
    assert code == 2
    line = one_line_error(lines)
    assert words in line and "prepare" in line
    assert snapshot(watched) == before  # not a byte written, changed or removed
    assert not (Path(out) / ".prepare").exists()


def test_a_second_run_into_src_cannot_read_its_own_outputs(source, tmp_path):
    """The library call refuses as the command does (``prepare SRC SRC/train/prepared``)."""
    from video_swin.errors import ConfigError

    before = snapshot(source)
    with pytest.raises(ConfigError, match="inside SRC"):
        prepare(source, source / "train" / "prepared", jobs=1)
    assert snapshot(source) == before


# -- item 3: the journal --------------------------------------------------------------------------


def test_a_repaired_video_is_prepared_on_the_rerun(tmp_path, capsys):
    src = make_src(tmp_path / "videos")
    good = (src / "train" / "walk" / "w2.mp4").read_bytes()
    (src / "train" / "walk" / "w2.mp4").write_bytes(b"")  # 0 bytes, e.g. a download cut short
    out = tmp_path / "out"
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 0 and "2 videos ready, 1 broken" in stdout  # a bad video alone keeps exit 0
    (src / "train" / "walk" / "w2.mp4").write_bytes(good)  # the download finished
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 0 and "3 videos ready, 0 broken" in stdout
    assert (out / "train" / "walk" / "w2.mp4").is_file()
    assert snapshot(src)["train/walk/w2.mp4"] == good


def test_failed_videos_are_retried_unless_skip_failed(tmp_path, capsys):
    src = make_src(tmp_path / "videos")
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "walk").write_text("in the way")  # the class folder cannot be made: not the videos' fault
    code, lines, _ = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 1 and "failed for another reason" in one_line_error(lines)
    reasons = [r["reason"] for r in csv.DictReader(open(out / "broken.csv"))]
    assert len(reasons) == 2 and all("cannot write" in r and "walk" in r for r in reasons)
    (out / "train" / "walk").unlink()
    code, lines, _ = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1", "--skip-failed")
    assert code == 1 and len(list(csv.DictReader(open(out / "broken.csv")))) == 2  # the verdict kept
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 0 and "3 videos ready, 0 broken" in stdout


def test_a_rerun_from_another_folder_finds_the_outputs(tmp_path):
    src = make_src(tmp_path / "videos")
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "video_swin.cli", "prepare", str(src)]
    first = subprocess.run([*cmd, "out", "--short-side", "32", "--jobs", "1"], cwd=tmp_path / "a", env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    journal = (tmp_path / "a" / "out" / ".prepare" / "journal.jsonl").read_text().splitlines()[1:]
    assert all(Path(json.loads(line)["dst"]).is_absolute() for line in journal)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "out").rglob("*.mp4")}
    again = subprocess.run([*cmd, "../../a/out", "--short-side", "32", "--jobs", "1", "--shards"],
                           cwd=tmp_path / "b" / "c", env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 videos ready, 0 broken" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "out").rglob("*.mp4")} == stamps  # nothing redone
    assert json.loads((tmp_path / "a" / "out" / "shards" / "train.json").read_text())["total"] == 3


def test_a_malformed_journal_line_is_skipped_with_a_warning(tmp_path, capsys, caplog):
    src = make_src(tmp_path / "videos")
    out = tmp_path / "out"
    assert cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")[0] == 0
    journal = out / ".prepare" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    bad = ['[1, 2]', '{"src": 3}', "not json", '{"src": "x", "dst": "y"}', "null"]
    journal.write_bytes(("\n".join([lines[0], *bad, *lines[1:]]) + "\n").encode() + b"\xff\xfe\n")
    code, err, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 0 and "3 videos ready, 0 broken" in stdout
    assert not any("Traceback" in line for line in err)
    warned = err + [r.getMessage() for r in caplog.records]
    for n in range(2, 2 + len(bad)):
        assert any(f"line {n}:" in line and "skipped" in line for line in warned), (n, warned)


SLOW_PREPARE = """
import sys
from tests.data import prepare_faults
from video_swin.data import prepare as m
m.prepare_one = prepare_faults.slow
m.prepare(sys.argv[1], sys.argv[2], jobs=2, timeout=600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_a_killed_prepare_and_a_second_prepare_is_refused(tmp_path, capsys, how):
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads process states from /proc (Linux)")
    src = make_src(tmp_path / "videos")
    out, pids = tmp_path / "out", tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "PREPARE_PIDS": str(pids),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(src), str(out)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2:
            assert parent.poll() is None, parent.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        # one lock per OUT: a second prepare is refused, naming the holder
        code, lines, _ = cli(capsys, str(src), str(out), "--jobs", "1")
        assert code == 2
        line = one_line_error(lines)
        assert "in use" in line and f"pid {parent.pid}" in line and str(out) in line
        parent.send_signal(how)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their prepare"
    finally:
        parent.kill()
        parent.wait()
        for pid in [int(p.name) for p in pids.iterdir()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    # the lock died with its holder: the next prepare runs
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1")
    assert code == 0 and "3 videos ready" in stdout


# -- a full disk, a read-only OUT, OUT a file (items 3 and 7) ----------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted at ``tmp_path/mnt`` (root ignores permissions: a read-only mount is real)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_and_marks_nothing_broken(tmp_path, tmpfs, capsys):
    src = make_src(tmp_path / "videos", {"train": {"walk": [f"w{i}" for i in range(6)]}}, frames=24, size=(96, 128))
    before = snapshot(src)
    out = tmpfs / "out"
    code, lines, _ = cli(capsys, str(src), str(out), "--short-side", "96", "--jobs", "1")
    line = one_line_error(lines)
    assert code == 1 and "full" in line and str(out) in line
    journal = (out / ".prepare" / "journal.jsonl").read_text().splitlines()[1:]
    assert not [e for e in map(json.loads, journal) if e["broken"]]  # no good video called broken
    assert not list(out.rglob("*.tmp-*"))
    subprocess.run(["mount", "-o", "remount,size=16m", str(tmpfs)], check=True)
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "96", "--jobs", "1")
    assert code == 0 and "6 videos ready, 0 broken" in stdout
    assert snapshot(src) == before


def test_a_read_only_out_is_one_line(tmp_path, tmpfs, capsys):
    src = make_src(tmp_path / "videos")
    (tmpfs / "existing").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for out in (tmpfs / "existing", tmpfs / "new"):
        code, lines, _ = cli(capsys, str(src), str(out), "--jobs", "1")
        line = one_line_error(lines)
        assert code == 2 and str(out) in line and "Read-only" in line


def test_out_a_file_is_one_line(source, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    code, lines, _ = cli(capsys, str(source), str(out), "--jobs", "1")
    assert code == 2 and "is a file" in one_line_error(lines)
    assert out.read_text() == "my notes"


# -- the smaller items ----------------------------------------------------------------------------


def test_a_link_to_a_device_is_not_called_dangling(tmp_path, capsys):
    src = make_src(tmp_path / "videos")
    (src / "train" / "walk" / "zero.mp4").symlink_to("/dev/zero")
    (src / "train" / "walk" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    out = tmp_path / "out"
    code, _, stdout = cli(capsys, str(src), str(out), "--short-side", "32", "--jobs", "1", "--timeout", "60")
    assert code == 0 and "3 videos ready, 2 broken" in stdout
    reasons = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(out / "broken.csv"))}
    assert "not a regular file" in reasons["zero.mp4"] and "dangling" not in reasons["zero.mp4"]
    assert "dangling" in reasons["gone.mp4"]


def test_the_decoders_say_a_link_to_a_device_is_not_a_regular_file(tmp_path):
    from video_swin.data import get_decoder
    from video_swin.errors import DecodeError

    (tmp_path / "zero.mp4").symlink_to("/dev/zero")
    with pytest.raises(DecodeError, match="not a regular file") as caught:
        get_decoder("pyav").get_frames(tmp_path / "zero.mp4", [0])
    assert "dangling" not in str(caught.value)


def test_the_closing_hint_names_only_the_tables_written(source, tmp_path, capsys):
    code, _, stdout = cli(capsys, str(source), str(tmp_path / "out"), "--short-side", "32", "--jobs", "1")
    assert code == 0
    assert "data.train_annotations=" in stdout and "val.csv" not in stdout
    assert not (tmp_path / "out" / "val.csv").exists()
    for word in stdout.split():
        if word.endswith(".csv"):
            assert Path(word.split("=")[-1]).is_file(), word


@pytest.mark.parametrize("label", ["..", ".", "../../escape", "a/../.."])
def test_a_label_cannot_move_a_video_out_of_its_split(tmp_path, label):
    src = make_src(tmp_path / "videos", {"train": {"x": ["v1"]}})
    (src / "list.txt").write_text("train/x/v1.mp4 0\n")
    (src / "classes.txt").write_text(label + "\n")
    out = tmp_path / "work" / "out"
    counts = prepare(src, out, annotations={"train": str(src / "list.txt")}, short_side=32, jobs=1)
    assert counts["prepared"] == 1 and counts["broken"] == 0
    videos = [p for p in (tmp_path / "work").rglob("*.mp4")]
    assert len(videos) == 1 and (out / "train") in videos[0].parents and videos[0].parent != out / "train"


def test_a_split_name_cannot_leave_out(source, tmp_path):
    from video_swin.errors import ConfigError

    (tmp_path / "list.txt").write_text("train/walk/w1.mp4 0\n")
    with pytest.raises(ConfigError, match="split name"):
        prepare(source, tmp_path / "out", annotations={"../escape": str(tmp_path / "list.txt")}, jobs=1)
    assert not (tmp_path / "escape.csv").exists() and not (tmp_path / "escape").exists()
