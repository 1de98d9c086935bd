"""Where a run's files live: a local folder, or any URI that Ray Train accepts as storage
(``s3://``, ``gs://``, ``file://``, ...), read and written through pyarrow's file systems."""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

# What reading or writing a storage may raise for the user's setting (a path that cannot be written, a bucket
# without credentials, an unknown scheme): each command turns it into one line naming the setting
FAILURES = (OSError, pa.ArrowException)


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(storage: str) -> str:
    """A local path expanded (``~``) and made absolute; a URI kept as given."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base``/parts; a URI's query (``s3://b/runs?region=x``) stays at the end."""
    if not is_uri(base):
        return str(Path(base).joinpath(*parts))
    u = urlsplit(base)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a run directory, local or URI (its query kept on the parent)."""
    if not is_uri(path):
        p = Path(resolve(path))
        return str(p.parent), p.name
    u = urlsplit(path)
    parent, _, name = u.path.rstrip("/").rpartition("/")
    return urlunsplit(u._replace(path=parent)), name


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path if is_uri(path) else resolve(path))


def kind(path: str) -> str | None:
    """``"file"``, ``"dir"``, or None where nothing is."""
    fs, p = _fs(path)
    t = fs.get_file_info(p).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(t)


def listdir(path: str) -> list[str]:
    """The names in folder ``path`` (none where it is not a folder)."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(p)))


def stat(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns; 0 where the store keeps none) of a file."""
    fs, p = _fs(path)
    info = fs.get_file_info(p)
    return info.size or 0, info.mtime_ns or 0


def write_bytes(path: str, data: bytes) -> None:
    """Write the file whole: on a file system (a local path, ``file://``) through a temporary name renamed into
    place, so that a reader never meets half a file and a failed write leaves the old one and nothing else; an
    object through one upload (an object store shows it only once complete)."""
    fs, p = _fs(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    tmp = f"{p}.{os.getpid()}-{threading.get_ident()}.tmp" if isinstance(fs, pafs.LocalFileSystem) else p
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != p:
            fs.move(tmp, p)
    except BaseException:
        if tmp != p and fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def read_bytes(path: str) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    """The file's text; FileNotFoundError when there is none."""
    return read_bytes(path).decode()


@contextmanager
def writing(path: str):
    """A local file name to write ``path`` through (a library that writes files itself: matplotlib, PIL):
    ``path`` itself, or for a URI a temporary file uploaded when the block ends."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="beray-") as tmp:
        local = os.path.join(tmp, split(path)[1])
        yield local
        write_bytes(path, Path(local).read_bytes())


def upload_dir(local: str | Path, dest: str) -> None:
    """Copy the files of the local folder ``local`` to ``dest`` (a URI), overwriting."""
    fs, p = _fs(dest)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(str(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
