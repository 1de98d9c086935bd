"""Write real encoded video files with PyAV (synthetic datasets, tests, benchmarks)."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterable

import av
import numpy as np

# container suffix -> the codec beray writes into it
CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".mkv": "libx264"}


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    codec: str | None = None,
    gop: int = 12,
    bit_rate: int | None = None,
    rotation: int | None = None,
    pts: Iterable[int] | None = None,
    time_base: Fraction | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Encode uint8 RGB frames (H, W, 3) to ``path``, deterministically (one encoder thread).

    ``codec`` defaults from the suffix (.avi: mpeg4, .mp4/.mkv: H.264). ``rotation``
    writes a display matrix (degrees counter-clockwise, as ``VideoFrame.rotation``
    reads it back). ``pts`` with ``time_base`` gives explicit, possibly variable,
    frame timestamps. ``options`` are the encoder's own (e.g. x264's ``crf``).
    """
    path = str(path)
    codec = codec or CODECS.get(os.path.splitext(path)[1].lower(), "mpeg4")
    pts_iter = iter(pts) if pts is not None else None
    with av.open(path, "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = gop
                stream.thread_count = 1  # the same bytes for the same frames
                if time_base is not None:
                    stream.codec_context.time_base = time_base
                    stream.time_base = time_base
                if bit_rate:
                    stream.bit_rate = bit_rate
                if codec == "libx264":
                    stream.options = {"preset": "veryfast", "crf": "18", **(options or {})}
                elif options:
                    stream.options = dict(options)
                if rotation:
                    stream.set_display_rotation(rotation)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if pts_iter is not None:
                vf.pts = next(pts_iter)
                vf.time_base = time_base
            for packet in stream.encode(vf):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)
