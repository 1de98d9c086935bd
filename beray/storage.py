"""Where a run's files live: a local folder, or any URI that Ray Train accepts as storage
(``s3://``, ``gs://``, ``file://``, ...), read and written through pyarrow's file systems."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs


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


def write_text(path: str, text: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def read_text(path: str) -> str:
    """The file's text; FileNotFoundError when there is none."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def upload_dir(local: str | Path, dest: str) -> None:
    """Copy the files of the local folder ``local`` to ``dest`` (a URI), overwriting."""
    fs, p = _fs(dest)
    fs.create_dir(p, recursive=True)
    pafs.copy_files(str(local), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
