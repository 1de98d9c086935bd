"""Read TensorBoard event files (the TFRecord framing tensorboardX writes) without TensorFlow."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def read_events(log_dir: str | Path) -> dict[str, list[tuple[int, float | None]]]:
    """tag -> [(step, value)] over every event file in ``log_dir``; images have value None."""
    out: dict[str, list[tuple[int, float | None]]] = {}
    for f in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4  # length, its crc, the record, its crc
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value if v.HasField("simple_value") else None))
    return out
