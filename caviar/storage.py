"""Experiment folders on local disk, NFS or object storage (s3://, gs://), through one interface."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pyarrow.fs
import pyarrow.lib

from caviar.errors import ConfigError


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
    """`location`/part/...; a URI keeps its query (?endpoint_override=...) at the end."""
    if is_uri(location):
        base, mark, query = location.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + mark + query
    return os.path.join(location, *parts)


@contextlib.contextmanager
def _reaching(location: str) -> Iterator[None]:
    """Object storage that cannot be reached (a wrong URI, no network, no credentials): one message
    naming the URI and the cause, not the client's traceback. A missing file stays what it is, and
    local paths keep their own errors."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, pyarrow.lib.ArrowException) as error:
        if not is_uri(location):
            raise
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"{location}: the storage cannot be reached ({type(error).__name__}: {cause}); check the "
                          "URI (bucket, endpoint_override, region), the network and the credentials (e.g. "
                          "AWS_ACCESS_KEY_ID, AWS_PROFILE), or use a local folder") from None


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem holding `location` and the path within it."""
    if is_uri(location):
        with _reaching(location):
            return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), location


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    with _reaching(location):
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    with _reaching(location):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode())


def read_text(location: str) -> str:
    fs, path = filesystem(location)
    with _reaching(location):
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
