"""Reading outside input safely: regular files only, within bounds; values quoted within bounds."""

import gzip
import os
import socket
import threading

import pytest

from ktae.safe_files import (
    SHORT_REPR_LENGTH,
    RefusedFile,
    decompress_gzip,
    loads_json,
    open_regular,
    read_bytes,
    read_text,
    short_repr,
)


def test_a_regular_file_is_read_within_its_limit(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo", encoding="utf-8")
    assert read_text(path, 6) == "héllo"
    with pytest.raises(RefusedFile, match=rf"{path} is larger than 5 bytes: refused"):
        read_bytes(path, 5)
    path.write_bytes(b"ok\xff")
    with pytest.raises(ValueError, match=rf"{path}: not UTF-8 text \(byte 2\)"):
        read_text(path, 100)


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_bytes(fifo, 10)
        except RefusedFile as error:
            outcome.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader so the test run ends, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert str(outcome[0]) == f"{fifo} is a FIFO (named pipe), not a regular file: refused"


def test_devices_folders_and_sockets_are_refused_by_name(tmp_path):
    with pytest.raises(RefusedFile, match="/dev/zero is a character device, not a regular file: refused"):
        read_bytes("/dev/zero", 10, follow_links=True)
    with pytest.raises(RefusedFile, match=f"{tmp_path} is a folder, not a regular file"):
        open_regular(tmp_path)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        with pytest.raises(OSError):  # a socket cannot even be opened as a file
            open_regular(tmp_path / "s")


def test_links_are_followed_only_when_asked(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("data")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(RefusedFile, match=f"{link} is a symbolic link, not a regular file: refused"):
        read_text(link, 100)
    assert read_text(link, 100, follow_links=True) == "data"
    to_zero = tmp_path / "zero"
    to_zero.symlink_to("/dev/zero")
    with pytest.raises(RefusedFile, match=f"{to_zero} is a character device"):
        read_bytes(to_zero, 10, follow_links=True)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothing")
    with pytest.raises(RefusedFile, match="is a symbolic link"):
        read_bytes(dangling, 10)
    with pytest.raises(FileNotFoundError):
        read_bytes(tmp_path / "missing", 10)


def test_gzip_is_decompressed_within_its_limit_and_damage_is_named(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(b"x" * 1000))
    assert decompress_gzip(path, 1000) == b"x" * 1000
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip.compress(b"\0" * (64 << 20)))  # 64 MiB from about 64 KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(RefusedFile, match=rf"{bomb} decompresses to more than 1 MiB: refused"):
        decompress_gzip(bomb, 1 << 20)
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=rf"{truncated}: truncated gzip data"):
        decompress_gzip(truncated, 1000)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_text("plain text")
    with pytest.raises(ValueError, match=rf"{not_gzip}: not valid gzip data"):
        decompress_gzip(not_gzip, 1000)


def test_short_repr_is_bounded_whatever_the_value():
    laughs: list = ["lol"] * 10
    for _ in range(30):  # 10**30 leaves if expanded
        laughs = [laughs] * 10
    for value in (laughs, "x" * 10**7, {i: "y" * 1000 for i in range(1000)}, 2**70, 10**5000):
        assert len(short_repr(value)) <= SHORT_REPR_LENGTH
    assert short_repr("fast") == "'fast'" and short_repr([1.5]) == "[1.5]"


def test_json_with_a_key_given_twice_or_nested_too_deep_is_refused_by_name():
    assert loads_json('{"a": 1, "b": {"a": 2}}', "x.json") == {"a": 1, "b": {"a": 2}}
    with pytest.raises(ValueError, match=r"^x\.json: duplicate key 'ktae'$"):
        loads_json('{"ktae": true, "b": 1, "ktae": false}', "x.json")
    with pytest.raises(ValueError, match=r"^x\.json: nested too deeply to read$"):
        loads_json("[" * 100_000 + "]" * 100_000, "x.json")
    with pytest.raises(ValueError, match=r"^x\.json: not valid JSON \(Expecting value, line 2 column 1\)$"):
        loads_json("[1,\n]", "x.json")


def test_text_or_gzip_is_read_within_its_limit(tmp_path):
    from ktae.safe_files import read_text_or_gzip

    plain, packed = tmp_path / "a.json", tmp_path / "a.json.gz"
    plain.write_text("[1, 2]")
    packed.write_bytes(gzip.compress(b"[1, 2]"))
    assert read_text_or_gzip(plain, 6) == read_text_or_gzip(packed, 6) == "[1, 2]"
    with pytest.raises(RefusedFile, match=rf"{plain} is larger than 5 bytes: refused"):
        read_text_or_gzip(plain, 5)
    with pytest.raises(RefusedFile, match=rf"{packed} decompresses to more than 5 bytes: refused"):
        read_text_or_gzip(packed, 5)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(RefusedFile, match="is a FIFO"):
        read_text_or_gzip(fifo, 5)


def test_printable_shows_what_a_terminal_would_act_on():
    from ktae.safe_files import printable

    assert printable("aime24 Ünïcode \uff13 ½ tab-free") == "aime24 Ünïcode \uff13 ½ tab-free"
    assert printable("x\x1b[2J\x07\n\r\t\x9b\u202e\u2028\u200b") == "x\\x1b[2J\\x07\\n\\r\\t\\x9b\\u202e\\u2028\\u200b"
