"""The reader returns exactly the frames asked for, and one typed error for every bad file."""

from __future__ import annotations

import os
import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import H, W, clip_index, write_indexed

from beray.data.encode import write_video
from beray.data.video import VideoReader, VideoReadError, probe, read_clip, read_clips

FORMATS = ["avi", "mp4", "mkv"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_probe(videos, fmt):
    info = probe(videos[fmt])
    assert (info.num_frames, info.width, info.height) == (100, W, H)
    assert info.fps == pytest.approx(25)
    assert info.keyframes[0] == 0 and len(info.keyframes) >= 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_start_and_stride(videos, fmt):
    clip = read_clip(videos[fmt], num_frames=16, stride=4, start=7)
    assert clip.shape == (16, H, W, 3) and clip.dtype == np.uint8
    assert clip_index(clip) == list(range(7, 7 + 64, 4))


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_loops_when_the_video_is_short(videos, fmt):
    # span (16 - 1) * 8 + 1 = 121 > 100 frames: indices wrap modulo 100
    assert clip_index(read_clip(videos[fmt], 16, 8)) == [(8 * j) % 100 for j in range(16)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_frames_in_any_order_with_repeats(videos, fmt):
    with VideoReader(videos[fmt]) as r:
        assert clip_index(r.frames([50, 3, 50, 99, 0, 27])) == [50, 3, 50, 99, 0, 27]


@pytest.mark.parametrize("fmt", FORMATS)
def test_uniform_clips(videos, fmt):
    clips = read_clips(videos[fmt], num_frames=4, stride=2, num_clips=5)
    assert clips.shape == (5, 4, H, W, 3)
    # starts spaced uniformly over [0, 100 - 7]
    assert [clip_index(c)[0] for c in clips] == [0, 23, 46, 70, 93]
    assert clip_index(clips[-1]) == [93, 95, 97, 99]


def test_random_clips_fit_and_follow_the_seed(videos):
    starts = []
    for seed in range(20):
        idx = clip_index(read_clip(videos["mp4"], 8, 3, start="random", rng=np.random.default_rng(seed)))
        assert idx == list(range(idx[0], idx[0] + 24, 3))  # never wraps: the clip fits
        starts.append(idx[0])
    assert len(set(starts)) > 10
    again = read_clip(videos["mp4"], 8, 3, start="random", rng=np.random.default_rng(3))
    assert clip_index(again)[0] == starts[3]


def test_segment_bounds(videos):
    # a Diving48-style segment [40, 60): clips stay inside it and loop within it
    clip = read_clip(videos["avi"], 8, 4, start=0, first=40, last=60)
    assert clip_index(clip) == [40 + (4 * j) % 20 for j in range(8)]


def test_output_size(videos):
    assert read_clip(videos["avi"], 2, size=24).shape == (2, 24, 32, 3)  # short side, aspect kept
    assert read_clip(videos["avi"], 2, size=(20, 30)).shape == (2, 20, 30, 3)
    small = read_clip(videos["avi"], 3, 5, start=11, size=(24, 32))
    assert clip_index(small) == [11, 16, 21]


def test_variable_frame_rate(tmp_path):
    # irregular timestamps: frame i is still the i-th frame shown
    gaps = np.random.default_rng(0).integers(20, 90, 60)
    path = write_indexed(tmp_path / "vfr.mp4", 60, pts=np.cumsum(gaps).tolist(), time_base=Fraction(1, 1000))
    assert probe(path).num_frames == 60
    assert clip_index(read_clip(path, 6, 7, start=5)) == [5, 12, 19, 26, 33, 40]


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, degrees):
    frame = np.zeros((H, W, 3), np.uint8)
    frame[: H // 2, : W // 4] = 255  # a bright block in the top-left corner
    path = tmp_path / f"rot{degrees}.mp4"
    write_video(path, [frame] * 4, rotation=degrees)
    got = read_clip(path, 1)[0]
    want = np.rot90(frame, degrees // 90)  # the display matrix turns counter-clockwise
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).mean() < 12
    # the short side is taken of the frame as displayed: 48 wide x 64 tall when turned
    assert read_clip(path, 1, size=16).shape[1:3] == ((21, 16) if degrees % 180 else (16, 21))


# -- bad files -----------------------------------------------------------------


def _cut(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for i in range(5):
            frame.pts = i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def bad_files(videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.avi").write_text("this is not a video\n" * 50)
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (d / "folder.mp4").mkdir()
    return {
        "missing": (d / "missing.mp4", "file not found"),
        "empty": (d / "empty.mp4", "empty file"),
        "not a video": (d / "text.avi", "cannot open"),
        "garbage": (d / "garbage.mp4", "cannot open"),
        "no video stream": (_audio_only(d / "audio.mp4"), "no video stream"),
        "a folder": (d / "folder.mp4", "not a regular file"),
        "truncated avi": (_cut(videos["avi"], d / "cut.avi", 0.5), "truncated"),
        "truncated mkv": (_cut(videos["mkv"], d / "cut.mkv", 0.6), "truncated"),
        "truncated mp4": (_cut(videos["mp4"], d / "cut.mp4", 0.7), "cannot open"),  # index (moov) cut off
    }


@pytest.mark.parametrize("kind", ["missing", "empty", "not a video", "garbage", "no video stream", "a folder",
                                  "truncated avi", "truncated mkv", "truncated mp4"])
def test_bad_file_raises_the_typed_error(bad_files, kind):
    path, reason = bad_files[kind]
    for read in (lambda: read_clip(path, 4, 2, start="random"), lambda: probe(path)):
        with pytest.raises(VideoReadError) as e:
            read()
        assert e.value.path == str(path)
        assert reason in e.value.reason
        assert str(path) in str(e.value)


def test_undecodable_frames_raise_the_typed_error(videos, tmp_path):
    # the container is intact, but every frame's coded data is noise
    data = bytearray(videos["avi"].read_bytes())
    with av.open(str(videos["avi"])) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    noise = np.random.default_rng(0)
    for pos, size in packets:
        data[pos: pos + size] = noise.bytes(size)
    path = tmp_path / "noise.avi"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoReadError) as e:
        read_clip(path, 16, 4, start=30)
    assert e.value.path == str(path) and "decoding failed" in e.value.reason


def test_error_survives_pickling():
    e = pickle.loads(pickle.dumps(VideoReadError("/x.mp4", "empty file (0 bytes)")))
    assert (e.path, e.reason) == ("/x.mp4", "empty file (0 bytes)")


def test_bad_arguments_are_value_errors_not_file_errors(videos):
    with pytest.raises(ValueError):
        read_clip(videos["avi"], 0)
    with pytest.raises(ValueError):
        read_clip(videos["avi"], 4, start="middle")
    with VideoReader(videos["avi"]) as r, pytest.raises(ValueError):
        r.frames([100])


def test_container_is_closed_after_a_read(videos, bad_files):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        read_clip(videos["mp4"], 4, 2, start="random")
        with pytest.raises(VideoReadError):
            read_clip(bad_files["truncated avi"][0], 4)
    assert len(os.listdir("/proc/self/fd")) == before
