"""Tests for tasks.scenes.tfrecord: CRC-32C, record framing (plain and GZIP), and the tf.train.Example codec.

The referees are a bytewise CRC-32C written here from the definition, the published check value, and
hand-assembled protobuf bytes (packed and unpacked encodings, as TensorFlow and other writers produce them).
"""
import gzip
import struct

import numpy as np
import pytest

from tasks.scenes import DataFormatError, MissingDataError
from tasks.scenes import tfrecord as tfr


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _crc32c_table_ref(data: bytes) -> int:
    """Bytewise table CRC, the table built from the bitwise definition (fast enough for 70 kB)."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("n", [0, 1, 7, 255, 256, 257, 511, 512, 1000, 3 * 256 + 5, 70_001])
def test_numpy_crc32c_matches_definition(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    expected = _crc32c_bitwise(data) if n < 2000 else _crc32c_table_ref(data)
    assert tfr._numpy_crc32c(data) == expected
    assert tfr.crc32c(data) == expected


def test_crc32c_check_values():
    assert tfr.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert tfr._numpy_crc32c(b"123456789") == 0xE3069283
    assert tfr.crc32c(b"") == 0
    assert tfr.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_masked_crc_definition():
    c = tfr.crc32c(b"abc")
    assert tfr.masked_crc32c(b"abc") == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_record_roundtrip_and_framing(tmp_path, compression):
    recs = [b"", b"x", bytes(range(256)) * 5, b"last"]
    path = tmp_path / "r.tfrecord"
    assert tfr.write_tfrecord(path, recs, compression=compression) == 4
    assert list(tfr.iter_tfrecord(path)) == recs  # "auto" detects GZIP
    assert list(tfr.iter_tfrecord(path, compression=compression, start=1, count=2)) == recs[1:3]
    raw = gzip.decompress(path.read_bytes()) if compression else path.read_bytes()
    # Framing by hand: length, masked CRC of the length, data, masked CRC of the data.
    length = struct.pack("<Q", 0)
    assert raw[:12] == length + struct.pack("<I", tfr.masked_crc32c(length))
    assert raw[12:16] == struct.pack("<I", tfr.masked_crc32c(b""))
    assert len(raw) == sum(16 + len(r) for r in recs)


def test_corrupt_and_truncated_records_name_the_file(tmp_path):
    path = tmp_path / "bad.tfrecord"
    tfr.write_tfrecord(path, [b"hello world", b"second record"])
    raw = bytearray(path.read_bytes())
    raw[14] ^= 1  # inside the first record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"bad\.tfrecord.*data CRC mismatch at record 0"):
        list(tfr.iter_tfrecord(path))
    assert list(tfr.iter_tfrecord(path, verify=False))[1] == b"second record"
    assert list(tfr.iter_tfrecord(path, start=1)) == [b"second record"]  # skipped records are not checked
    raw[14] ^= 1
    raw[3] ^= 1  # the length field
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="length CRC mismatch at record 0"):
        list(tfr.iter_tfrecord(path))
    raw[3] ^= 1
    path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(DataFormatError, match="truncated record 1"):
        list(tfr.iter_tfrecord(path))
    gz = tmp_path / "trunc.tfrecord.gz"
    tfr.write_tfrecord(gz, [bytes(1000)] * 5, compression="GZIP")
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(DataFormatError, match="trunc.tfrecord.gz"):
        list(tfr.iter_tfrecord(gz))
    flipped = tmp_path / "flip.tfrecord.gz"
    tfr.write_tfrecord(flipped, [np.random.default_rng(1).bytes(5000)] * 3, compression="GZIP")
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the deflate stream
    flipped.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="flip.tfrecord.gz"):
        list(tfr.iter_tfrecord(flipped))
    with pytest.raises(MissingDataError, match="nope.tfrecord"):
        list(tfr.iter_tfrecord(tmp_path / "nope.tfrecord"))
    with pytest.raises(ValueError, match="compression"):
        list(tfr.iter_tfrecord(path, compression="ZLIB"))


def test_example_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    feats = {
        "image": [bytes([v]) for v in img.ravel()],
        "blob": [b"abc", b"", b"\x00\xff"],
        "x": np.array([0.5, -1.25, 3e9], dtype=np.float64),
        "ids": np.array([0, 1, -1, 2**40, -(2**63), 2**63 - 1], dtype=np.int64),
        "flags": np.array([True, False]),
        "empty_f": np.zeros(0, np.float32),
    }
    ser = tfr.encode_example(feats)
    ex = tfr.parse_example(ser)
    assert ex["image"] == feats["image"] and ex["blob"] == feats["blob"]
    assert ex["x"].dtype == np.float32 and np.array_equal(ex["x"], feats["x"].astype(np.float32))
    assert ex["ids"].dtype == np.int64 and np.array_equal(ex["ids"], feats["ids"])
    assert np.array_equal(ex["flags"], [1, 0]) and ex["empty_f"].size == 0
    u8 = tfr.parse_example(ser, bytes_as="uint8")
    assert u8["image"].dtype == np.uint8 and np.array_equal(u8["image"], img.ravel())  # fast path
    assert np.array_equal(u8["blob"], np.frombuffer(b"abc\x00\xff", np.uint8))  # general path


def _ld(field, payload):  # a length-delimited field, for hand-assembled protos
    return bytes([(field << 3) | 2, len(payload)]) + payload


def test_parse_unpacked_encodings_and_unknown_fields():
    # float_list with two unpacked fixed32 values, int64_list with unpacked varints (300, -1), an empty
    # Feature, and unknown fields at every level (which must be skipped).
    floats = b"".join(bytes([(1 << 3) | 5]) + struct.pack("<f", v) for v in (1.5, -2.0))
    neg1 = b"\xff" * 9 + b"\x01"
    ints = bytes([(1 << 3) | 0]) + b"\xac\x02" + bytes([(1 << 3) | 0]) + neg1
    unknown = bytes([(7 << 3) | 0, 5])
    feature_f = _ld(2, floats + unknown)
    feature_i = _ld(3, ints)
    entries = (_ld(1, _ld(1, b"f") + _ld(2, feature_f)) + _ld(1, _ld(1, b"i") + _ld(2, feature_i))
               + _ld(1, _ld(1, b"none") + _ld(2, b"")) + unknown)
    ex = tfr.parse_example(_ld(1, entries) + unknown)
    assert np.array_equal(ex["f"], np.array([1.5, -2.0], np.float32))
    assert ex["i"].tolist() == [300, -1] and ex["none"] is None


@pytest.mark.parametrize("bad", [b"\x0a\x05\x0a\x03", b"\x0a", b"\x0b\x00", b"\x0a\x02\x0a\x80"])
def test_parse_rejects_malformed(bad):
    with pytest.raises(ValueError, match="malformed tf.train.Example"):
        tfr.parse_example(bad)


def test_read_examples_reports_record(tmp_path):
    path = tmp_path / "ex.tfrecord"
    tfr.write_tfrecord(path, [tfr.encode_example({"a": np.arange(3)}), b"\x0a\x05\x0a"], compression="GZIP")
    it = tfr.read_examples(path)
    assert next(it)["a"].tolist() == [0, 1, 2]
    with pytest.raises(DataFormatError, match=r"ex\.tfrecord: record 1"):
        next(it)
    with pytest.raises(ValueError, match="unsupported"):
        tfr.encode_example({"a": "text"})
