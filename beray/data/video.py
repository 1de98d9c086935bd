"""PyAV clip reader: decode only the frames a clip needs, never crash on a bad file.

Frame ``i`` of a video is its i-th frame in presentation order, whatever the
frame rate does (variable frame rate files included). The reader builds that
order from the packets' timestamps (a demux, no decoding), seeks to the
keyframe at or before the first wanted frame, decodes no further than the last
wanted one, and converts and resizes in swscale only the frames it returns.
Rotation metadata (the display matrix) is applied, so frames come out the way
a player shows them.

Every problem with a file surfaces as one :class:`VideoReadError` carrying the
path and a reason; callers skip, count and name such files.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from beray.data import sampling

Size = int | tuple[int, int] | None
"""Output size: None keeps the native size, an int is the short side (aspect
kept), a (height, width) pair is exact."""

# A header may count a frame or two the demuxer never yields (edit lists,
# a trailing empty packet); more missing than this means the file was cut.
_TRUNCATION_SLACK = 2


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's swscale converter, kept for the life of the process: it reuses its
    context (swscale rebuilds it only when sizes or formats change) instead of making one per
    frame as ``frame.to_ndarray(width=..., height=...)`` does."""
    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return _local.reformatter


class VideoReadError(Exception):
    """A video could not be read. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep path and reason across processes (Ray, multiprocessing)
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What the reader knows of a video after indexing it."""

    path: str
    num_frames: int
    fps: float
    width: int  # as stored; see ``VideoReader`` for the displayed size
    height: int
    codec: str
    time_base: Fraction
    pts: np.ndarray  # presentation timestamps, sorted: frame i has pts[i]
    keyframes: np.ndarray  # presentation indices of the keyframes, sorted


def _output_size(size: Size, height: int, width: int) -> tuple[int, int]:
    """(height, width) of the output for a frame displayed at ``height`` x ``width``."""
    if size is None:
        return height, width
    if isinstance(size, int):
        short = min(height, width)
        return max(1, round(height * size / short)), max(1, round(width * size / short))
    return int(size[0]), int(size[1])


class VideoReader:
    """An open video. Use as a context manager so the container is always closed.

    >>> with VideoReader("v.mp4") as r:
    ...     clip = r.clip(num_frames=16, stride=4, start="random", size=128)
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, timeout_s: float | None = None):
        self.path = str(path)
        self.threads = threads
        self.timeout_s = timeout_s  # a file that takes longer to index or decode is abandoned as bad
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._container = None
        self._info: VideoInfo | None = None

    def _check_time(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise VideoReadError(self.path, f"abandoned: reading took longer than {self.timeout_s:g} s")

    # -- opening and indexing -------------------------------------------------

    def __enter__(self) -> "VideoReader":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise VideoReadError(self.path, "file not found") from None
        except OSError as e:
            raise VideoReadError(self.path, f"cannot stat: {e.strerror or e}") from None
        if not Path(self.path).is_file():
            raise VideoReadError(self.path, "not a regular file")
        if st.st_size == 0:
            raise VideoReadError(self.path, "empty file (0 bytes)")
        with self._wrap("cannot open as a video container (not a video, or cut short)"):
            self._container = av.open(self.path, metadata_errors="ignore")
        if not self._container.streams.video:
            self.close()
            raise VideoReadError(self.path, "no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "SLICE" if self.threads > 1 else "NONE"
        stream.thread_count = self.threads

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    @property
    def _stream(self):
        if self._container is None:
            raise RuntimeError("VideoReader is not open; use it as a context manager")
        return self._container.streams.video[0]

    @property
    def info(self) -> VideoInfo:
        """Index of the video (built once per open, by demuxing packets only)."""
        if self._info is None:
            with self._wrap("cannot index packets"):
                self._info = self._index()
        return self._info

    def _index(self) -> VideoInfo:
        stream = self._stream
        pts, key_pts = [], []
        with self._packets() as packets:
            for packet in packets:
                self._check_time()
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue  # the demuxer's final flush packet, or an empty placeholder
                pts.append(ts)
                if packet.is_keyframe:
                    key_pts.append(ts)
        if not pts:
            raise VideoReadError(self.path, "no video frames in the stream")
        pts_arr = np.unique(np.asarray(pts, dtype=np.int64))  # sorted; drops duplicate timestamps
        self._check_complete(stream, pts_arr)
        keyframes = np.searchsorted(pts_arr, np.asarray(key_pts, dtype=np.int64))
        if keyframes.size == 0 or keyframes[0] != 0:
            keyframes = np.concatenate([[0], keyframes])  # decoding can always start at the start
        rate = stream.average_rate or stream.guessed_rate
        ctx = stream.codec_context
        return VideoInfo(
            path=self.path,
            num_frames=len(pts_arr),
            fps=float(rate) if rate else 0.0,
            width=ctx.width,
            height=ctx.height,
            codec=ctx.name,
            time_base=stream.time_base,
            pts=pts_arr,
            keyframes=np.unique(keyframes),
        )

    def _check_complete(self, stream, pts: np.ndarray) -> None:
        """Raise if the header promises more than the file holds (a cut download or copy)."""
        declared = stream.frames
        if declared:
            if len(pts) < declared - _TRUNCATION_SLACK:
                raise VideoReadError(
                    self.path, f"truncated: the header declares {declared} frames, only {len(pts)} are present"
                )
            return
        # No frame count in the header (Matroska, WebM): compare durations instead.
        if self._container.duration is None or len(pts) < 2:
            return
        declared_s = self._container.duration / av.time_base
        frame_s = float((pts[-1] - pts[0]) * stream.time_base) / (len(pts) - 1)
        present_s = float((pts[-1] - pts[0]) * stream.time_base) + frame_s
        if present_s < declared_s - _TRUNCATION_SLACK * frame_s - 1e-3:
            raise VideoReadError(
                self.path, f"truncated: the header declares {declared_s:.2f} s, only {present_s:.2f} s are present"
            )

    # -- reading ------------------------------------------------------------

    def frames(self, indices: Iterable[int] | np.ndarray, size: Size = None) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as uint8 (N, H, W, 3) RGB."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        info = self.info
        if idx.size and (idx.min() < 0 or idx.max() >= info.num_frames):
            raise ValueError(f"frame indices must lie in [0, {info.num_frames}), got {idx.min()}..{idx.max()}")
        wanted = np.unique(idx)
        with self._wrap("decoding failed"):
            decoded = self._decode(wanted, size)
        out = np.stack([decoded[i] for i in idx]) if idx.size else np.zeros((0, 0, 0, 3), np.uint8)
        return out

    def clip(
        self,
        num_frames: int,
        stride: int = 1,
        start: int | str = 0,
        size: Size = None,
        rng: np.random.Generator | None = None,
        first: int = 0,
        last: int | None = None,
    ) -> np.ndarray:
        """One clip of ``num_frames`` frames at ``stride``, as uint8 (T, H, W, 3).

        ``start`` is a frame index relative to ``first`` or ``"random"``. ``first``
        and ``last`` (exclusive) bound the clip to a segment of the video, as the
        start/end frames of Diving48 records do. Short segments loop (see
        :mod:`beray.data.sampling`).
        """
        lo, n = self.segment(first, last)
        if start == "random":
            start = sampling.random_start(n, num_frames, stride, rng if rng is not None else np.random.default_rng())
        elif not isinstance(start, (int, np.integer)):
            raise ValueError(f"start must be a frame index or 'random', got {start!r}")
        return self.frames(lo + sampling.clip_indices(n, num_frames, stride, int(start)), size)

    def clips(
        self, num_frames: int, stride: int, num_clips: int, size: Size = None, first: int = 0, last: int | None = None
    ) -> np.ndarray:
        """``num_clips`` uniformly spaced clips as uint8 (N, T, H, W, 3), decoded in one pass."""
        lo, n = self.segment(first, last)
        starts = sampling.uniform_starts(n, num_frames, stride, num_clips)
        idx = np.stack([sampling.clip_indices(n, num_frames, stride, int(s)) for s in starts]) + lo
        frames = self.frames(idx.reshape(-1), size)
        return frames.reshape(num_clips, num_frames, *frames.shape[1:])

    def segment(self, first: int | None, last: int | None) -> tuple[int, int]:
        """(first frame, length) of the segment [first, last) clamped to the video; None or a
        negative value means the video's start or end."""
        total = self.info.num_frames
        first = first if first is not None and first >= 0 else 0
        hi = total if last is None or last < 0 else min(last, total)
        lo = min(max(first, 0), total - 1)
        return lo, max(hi - lo, 1)

    def _keyframe_before(self, index: int) -> int:
        keys = self.info.keyframes
        return int(keys[np.searchsorted(keys, index, side="right") - 1])

    @contextmanager
    def _packets(self):
        """The video stream's packets, from where the container stands. The demuxer is
        closed explicitly on the way out: PyAV 18's demux generator frees its read packet
        only in ``close()``, not when it is dropped, so every clip that stops decoding early
        (nearly all of them) leaked about 0.1 KB and, by pinning heap pages between frame
        buffers, about 3 MB per 1,000 clips of resident memory (``python -m beray.bench soak``)."""
        packets = self._container.demux(self._stream)
        try:
            yield packets
        finally:
            packets.close()

    def _decode_from(self, key: int, index_of: dict[int, int]):
        """Yield (frame index, frame) from keyframe ``key`` on, to the end of the stream."""
        info, stream = self.info, self._stream
        self._container.seek(int(info.pts[key]), stream=stream, backward=True, any_frame=False)
        current, first = key - 1, True
        with self._packets() as packets:
            for frame in (f for packet in packets for f in packet.decode()):
                self._check_time()
                current = index_of.get(frame.pts, current + 1) if frame.pts is not None else current + 1
                if first and current > key:
                    break
                first = False
                yield current, frame
            else:
                return
        # The seek landed past the keyframe (a demuxer that seeks by dts, an index off
        # by a frame): decode from the start of the file instead.
        if key > 0:
            yield from self._decode_from(0, index_of)

    def _decode(self, wanted: np.ndarray, size: Size) -> dict[int, np.ndarray]:
        """Decode the sorted unique frame indices ``wanted``, seeking forward when it pays."""
        index_of = {int(p): i for i, p in enumerate(self.info.pts)}
        out: dict[int, np.ndarray] = {}
        dims = None  # swscale output (w, h) and quarter turns, fixed by the first frame
        pos = 0  # position in ``wanted`` of the next frame to find
        while pos < len(wanted):
            current = -1
            # closing(): the demuxer is released now, even when an error keeps this frame alive
            with closing(self._decode_from(self._keyframe_before(int(wanted[pos])), index_of)) as decoded:
                for current, frame in decoded:
                    if current < wanted[pos]:
                        continue
                    if current > wanted[pos]:
                        raise VideoReadError(self.path, f"frame {int(wanted[pos])} could not be decoded")
                    if dims is None:
                        dims = self._conversion(frame, size)
                    out[current] = self._convert(frame, *dims)
                    pos += 1
                    if pos == len(wanted) or self._keyframe_before(int(wanted[pos])) > current + 1:
                        break  # done, or a keyframe lies before the next wanted frame: seek to it
                else:
                    raise VideoReadError(
                        self.path,
                        f"decoding stopped at frame {current}, before frame {int(wanted[pos])} (truncated or corrupt)",
                    )
        return out

    @staticmethod
    def _conversion(frame: av.VideoFrame, size: Size) -> tuple[int, int, int]:
        """(decode width, decode height, quarter turns) giving ``size`` after rotation."""
        turns = round((frame.rotation or 0) / 90) % 4
        disp_h, disp_w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
        out_h, out_w = _output_size(size, disp_h, disp_w)
        return (out_h, out_w, turns) if turns % 2 else (out_w, out_h, turns)

    @staticmethod
    def _convert(frame: av.VideoFrame, width: int, height: int, turns: int) -> np.ndarray:
        rgb = _reformatter().reformat(frame, width, height, "rgb24", interpolation="BILINEAR")
        # Rows are padded to line_size: view the plane, then copy the visible part out.
        plane = rgb.planes[0]
        rows = np.frombuffer(plane, np.uint8, count=height * plane.line_size).reshape(height, plane.line_size)
        out = rows[:, : width * 3].reshape(height, width, 3)
        return np.ascontiguousarray(np.rot90(out, turns)) if turns else out.copy()

    @contextmanager
    def _wrap(self, what: str):
        """Turn anything a bad file makes PyAV raise into a VideoReadError."""
        try:
            yield
        except VideoReadError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - the reader's contract: nothing else escapes
            self.close()
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise VideoReadError(self.path, f"{what}: {reason}") from e


def read_clip(path: str | os.PathLike, num_frames: int, stride: int = 1, start: int | str = 0,
              size: Size = None, rng: np.random.Generator | None = None, first: int = 0,
              last: int | None = None, threads: int = 1, timeout_s: float | None = None) -> np.ndarray:
    """Read one clip from ``path``; see :meth:`VideoReader.clip`."""
    sampling.clip_span(num_frames, stride)  # validate before touching the file
    with VideoReader(path, threads, timeout_s) as reader:
        return reader.clip(num_frames, stride, start, size, rng, first, last)


def read_clips(path: str | os.PathLike, num_frames: int, stride: int, num_clips: int, size: Size = None,
               first: int = 0, last: int | None = None, threads: int = 1, timeout_s: float | None = None) -> np.ndarray:
    """Read ``num_clips`` uniformly spaced clips from ``path``; see :meth:`VideoReader.clips`."""
    sampling.clip_span(num_frames, stride)
    with VideoReader(path, threads, timeout_s) as reader:
        return reader.clips(num_frames, stride, num_clips, size, first, last)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Index a video (frame count, rate, size, keyframes) or raise VideoReadError."""
    with VideoReader(path) as reader:
        return reader.info
