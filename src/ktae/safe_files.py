"""Reading input that comes from outside the process: regular files only, opened without races, read
within bounds; values shown in error messages within bounds.

Every reader of a file the user (or another tool, or a run folder) hands us goes through `open_regular`:
the file is opened first and checked on the open descriptor (``fstat``), so a FIFO, a device such as
``/dev/zero``, a folder or a symbolic link is refused by name before anything is read, and nothing can
swap the file between the check and the read. ``follow_links=True`` is for a path the user named
themselves (a link they made on purpose); entries found inside folders are never followed.

Whole-file readers take a byte limit (`read_bytes`, `read_text`, `decompress_gzip`, `read_text_or_gzip`), so
the memory a file costs is bounded by the reader, not by the file. `short_repr` bounds a value quoted in an error
message; `printable` escapes what a terminal would act on in text printed from an input.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import reprlib
import stat
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = [
    "RefusedFile",
    "decompress_gzip",
    "file_kind",
    "format_size",
    "loads_json",
    "open_regular",
    "printable",
    "read_bytes",
    "read_text",
    "read_text_or_gzip",
    "short_repr",
    "shorten",
]


class RefusedFile(ValueError):
    """A file refused by name: not a regular file, a symbolic link where none is followed, or too large."""


def format_size(size: int) -> str:
    """``1048576`` -> ``"1 MiB"``: a byte count as the limits are written."""
    if size < 1024:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:.4g} {unit}"


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO (named pipe)"), for refusals."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: str | os.PathLike, *, follow_links: bool = False, append: bool = False) -> BinaryIO:
    """``path`` opened in binary mode if it is a regular file; else `RefusedFile` naming it.

    Opened for reading, or with ``append`` for appending (created when missing, never truncated). Opened
    non-blocking (a FIFO does not wait for a writer) and without following a final symbolic link unless
    ``follow_links``; the type is checked on the opened descriptor. A missing file to read raises the usual
    ``FileNotFoundError``.
    """
    flags = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    flags |= (os.O_WRONLY | os.O_APPEND | os.O_CREAT) if append else os.O_RDONLY
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_links and os.path.islink(path):
            raise RefusedFile(f"{os.fspath(path)} is a symbolic link, not a regular file: refused") from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise RefusedFile(f"{os.fspath(path)} is {file_kind(mode)}, not a regular file: refused")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "ab" if append else "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_bytes(path: str | os.PathLike, limit: int, *, follow_links: bool = False) -> bytes:
    """The content of a regular file (`open_regular`) of at most ``limit`` bytes; a larger one is refused."""
    with open_regular(path, follow_links=follow_links) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(f"{os.fspath(path)} is larger than {format_size(limit)}: refused")
    return data


def read_text(path: str | os.PathLike, limit: int, *, follow_links: bool = False) -> str:
    """`read_bytes` decoded as UTF-8; bytes that are not UTF-8 are a ValueError naming the file and offset."""
    data = read_bytes(path, limit, follow_links=follow_links)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text (byte {error.start})") from None


def decompress_gzip(path: str | os.PathLike, limit: int, *, follow_links: bool = False) -> bytes:
    """The decompressed content of a gzip file of at most ``limit`` bytes (read in a bounded buffer, so a
    small file that expands enormously costs ``limit``, not its expansion); more is refused. A truncated
    or corrupt file is a ValueError naming it."""
    with open_regular(path, follow_links=follow_links) as raw:
        return _gunzip(raw, path, limit)


def _gunzip(raw: BinaryIO, path: str | os.PathLike, limit: int) -> bytes:
    with gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
        try:
            data = unpacked.read(limit + 1)
        except EOFError:
            raise ValueError(f"{os.fspath(path)}: truncated gzip data (the file ends mid-stream)") from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(f"{os.fspath(path)}: not valid gzip data ({error})") from None
    if len(data) > limit:
        raise RefusedFile(f"{os.fspath(path)} decompresses to more than {format_size(limit)}: refused")
    return data


GZIP_MAGIC = b"\x1f\x8b"


def read_text_or_gzip(path: str | os.PathLike, limit: int, *, follow_links: bool = False) -> str:
    """The UTF-8 text of a regular file (`open_regular`), decompressed first when it starts with gzip's magic
    bytes; at most ``limit`` bytes of text (as `decompress_gzip` and `read_bytes` bound them), else `RefusedFile`."""
    with open_regular(path, follow_links=follow_links) as raw:
        compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        data = _gunzip(raw, path, limit) if compressed else raw.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(f"{os.fspath(path)} is larger than {format_size(limit)}: refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{os.fspath(path)}: not UTF-8 text (byte {error.start})") from None


def loads_json(text: str | bytes, where: str) -> Any:
    """``json.loads`` of a whole document, refusing what it would silently accept: a key given twice in one
    object (``json`` keeps the last), and nesting too deep to parse (a RecursionError). Errors name ``where``."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for key, value in pairs:
            if key in record:
                raise ValueError(f"duplicate key {short_repr(key)}")
            record[key] = value
        return record

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg}, line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to read") from None
    except ValueError as error:  # a duplicate key, or an int beyond Python's digit limit
        raise ValueError(f"{where}: {error}") from None


def json_lines(text: str, path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line of the JSON-lines ``text`` (the file ``path``) as an object (`loads_json`), with
    where it stands, ``path:N``, for the caller's own errors about it."""
    # JSON lines end at newlines only: a record may hold other line separators (U+2028, form feed).
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = loads_json(line, where)
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4
SHORT_REPR_LENGTH = 120  # characters at most


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters (nested containers to a few items and levels), for
    quoting an input in an error message: its cost is bounded whatever the value's size or depth."""
    try:
        return shorten(_SHORT.repr(value))
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"


def shorten(text: str, limit: int = SHORT_REPR_LENGTH) -> str:
    """``text`` cut to ``limit`` characters (ending in "..." when cut): another error's message quoted in ours."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Characters a terminal may act on instead of showing: controls (ESC starts escape sequences), format characters
# (bidirectional overrides reorder what is shown) and line and paragraph separators.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on written as its escape (``\\x1b``, ``\\n``,
    ``\\u202e``), for printing text that comes from input files: ESC sequences, bidirectional overrides
    and line breaks in a name are shown, never executed."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
