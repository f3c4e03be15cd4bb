"""Experiment folders on local disk, NFS or object storage (s3://, gs://), through one interface."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs


def is_uri(location: str) -> bool:
    return "://" in location


def resolve(location: str) -> str:
    """A local path made absolute (Ray Tune wants that), a URI as it is."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return os.path.join(location, *parts)


def _fs(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def exists(location: str) -> bool:
    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(location: str, text: str) -> None:
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def read_text(location: str) -> str:
    fs, path = _fs(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()
