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


def uri(path: str, like: str) -> str:
    """`path`, a path within the filesystem of the location `like`, as a location of the same kind.

    Ray reports trial and checkpoint paths within the storage filesystem: "bucket/caviar/exp/trial_1"
    for an experiment at "s3://bucket/caviar/exp". Given that experiment, this gives back
    "s3://bucket/caviar/exp/trial_1" (with the experiment's query, e.g. ?endpoint_override=...).
    """
    if not path or not is_uri(like) or is_uri(path):
        return path
    scheme, rest = like.split("://", 1)
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{scheme}://{path}{query}"


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        return "/".join([location.rstrip("/"), *parts])
    return os.path.join(location, *parts)


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem holding `location` and the path within it."""
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def writable_problem(location: str) -> str | None:
    """Why results cannot be written under the local folder `location` (None if they can, or for
    object storage, whose permissions only a write tells). The folder is created if missing."""
    import tempfile

    if is_uri(location):
        return None
    try:
        Path(location).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=location, prefix=".caviar-write-test-"):
            return None
    except OSError as error:
        return error.strerror or str(error)
