"""A small TFRecord reader/writer and tf.train.Example codec, without TensorFlow.

Used to read DeepMind's ``multi_object_datasets`` files (Multi-dSprites, App. F.3), which are GZIP-compressed
TFRecord files of serialized ``tf.train.Example`` protos, and to write test fixtures in that exact format.

TFRecord framing (per record): ``uint64 length`` (little-endian), ``uint32 masked_crc32c(length bytes)``,
``length`` bytes of data, ``uint32 masked_crc32c(data)``, with ``masked(c) = ((c >> 15) | (c << 17)) +
0xa282ead8 (mod 2**32)`` and CRC-32C (Castagnoli, reflected polynomial 0x82F63B78). A GZIP file is the whole
record stream gzip-compressed.

Example proto (the subset TensorFlow defines in ``example.proto`` / ``feature.proto``)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }      # map entries: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Both packed and unpacked encodings of float/int64 lists are read; unknown fields are skipped. CRC-32C uses
the ``google_crc32c`` or ``crc32c`` package when one is installed, and otherwise a vectorised numpy
implementation (table lookups per byte position inside 256-byte blocks, blocks combined with a GF(2)-linear
"shift by zero bytes" in a log-depth tree), which runs at roughly 100-300 MB/s.

Known limits: ZLIB-compressed TFRecords are not supported (only none and GZIP); the reader streams records
but cannot seek, so skipping the first records still reads (but does not CRC-check) them.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from .records import DataFormatError, require_file

__all__ = [
    "crc32c", "masked_crc32c", "iter_tfrecord", "write_tfrecord", "parse_example", "encode_example",
    "read_examples",
]

# ---- CRC-32C -------------------------------------------------------------------------------------------------
_POLY = 0x82F63B78
_MASK32 = 0xFFFFFFFF
_BLOCK = 256


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _make_table()  # (256,) one-byte step of the reflected CRC


def _shift1(s: np.ndarray) -> np.ndarray:
    """F(s): the CRC state after feeding one zero byte (linear over GF(2))."""
    return _TABLE[s & 0xFF] ^ (s >> 8)


def _make_pos_table() -> np.ndarray:
    # pos[j, b] = F^j(TABLE[b]): contribution of byte b followed by j more bytes.
    pos = np.empty((_BLOCK, 256), dtype=np.uint32)
    cur = _TABLE.copy()
    for j in range(_BLOCK):
        pos[j] = cur
        cur = _shift1(cur)
    return pos


def _bytes_basis() -> np.ndarray:
    # (4, 256): value b placed in byte k of a 32-bit word.
    b = np.arange(256, dtype=np.uint32)
    return np.stack([b << np.uint32(8 * k) for k in range(4)])


def _apply(tables: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply the linear map given by 4 byte tables (4, 256) to uint32 values v."""
    return (tables[0][v & 0xFF] ^ tables[1][(v >> 8) & 0xFF]
            ^ tables[2][(v >> 16) & 0xFF] ^ tables[3][v >> 24])


class _NumpyCrc32c:
    """CRC-32C over a bytes object with numpy; tables are built on first use (about 20 ms)."""

    def __init__(self) -> None:
        self._pos: np.ndarray | None = None
        self._zpow: list[np.ndarray] = []  # _zpow[l]: tables of F^(BLOCK * 2**l)
        self._rev = None

    def _setup(self) -> None:
        self._pos = _make_pos_table()
        self._rev = np.arange(_BLOCK - 1, -1, -1)
        t = _bytes_basis()
        for _ in range(_BLOCK):
            t = _shift1(t)
        self._zpow = [t]

    def _z(self, level: int) -> np.ndarray:
        while len(self._zpow) <= level:
            prev = self._zpow[-1]
            self._zpow.append(_apply(prev, prev))  # F^(2m) = F^m o F^m, table by table
        return self._zpow[level]

    def __call__(self, data: bytes | memoryview) -> int:
        if self._pos is None:
            self._setup()
        b = np.frombuffer(data, dtype=np.uint8)
        n = b.size
        q, r = divmod(n, _BLOCK)
        # Initial value 0xFFFFFFFF pushed through n bytes: F^r then (F^BLOCK)^q.
        init = np.array([_MASK32], dtype=np.uint32)
        for _ in range(r):
            init = _shift1(init)
        level, k = 0, q
        while k:
            if k & 1:
                init = _apply(self._z(level), init)
            k >>= 1
            level += 1
        # Linear part of the leading r bytes.
        acc = np.bitwise_xor.reduce(self._pos[np.arange(r - 1, -1, -1), b[:r]]) if r else np.uint32(0)
        if q:
            blocks = b[r:].reshape(q, _BLOCK)
            x = np.bitwise_xor.reduce(self._pos[self._rev, blocks], axis=1)  # (q,) per-block contributions
            # Horner over blocks, acc first: s = Z(s) ^ x_m. Prepend acc and zero-pad to a power of two
            # at the front (Z(0) = 0), then combine pairs level by level.
            x = np.concatenate([np.array([acc], dtype=np.uint32), x])
            size = 1 << (x.size - 1).bit_length()
            x = np.concatenate([np.zeros(size - x.size, dtype=np.uint32), x])
            level = 0
            while x.size > 1:
                x = _apply(self._z(level), x[0::2]) ^ x[1::2]
                level += 1
            acc = x[0]
        return int(~(init[0] ^ np.uint32(acc)) & _MASK32)


_numpy_crc32c = _NumpyCrc32c()


def _pick_crc32c():
    try:
        import google_crc32c

        return lambda data: int(google_crc32c.value(bytes(data)))
    except ImportError:
        pass
    try:
        import crc32c as _crc32c_pkg

        return lambda data: int(_crc32c_pkg.crc32c(bytes(data)))
    except (ImportError, AttributeError):
        pass
    return _numpy_crc32c


_crc32c_impl = _pick_crc32c()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data`` as an unsigned 32-bit int; crc32c(b"123456789") == 0xE3069283."""
    return _crc32c_impl(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add 0xa282ead8 (mod 2**32)."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & _MASK32) + 0xA282EAD8) & _MASK32


# ---- record framing --------------------------------------------------------------------------------------------
def _open(path: Path, compression: str | None) -> BinaryIO:
    if compression not in (None, "", "auto", "GZIP", "gzip", "NONE", "none"):
        raise ValueError(f"compression must be None, 'GZIP' or 'auto', got {compression!r}")
    if compression == "auto":
        with open(path, "rb") as f:
            compression = "GZIP" if f.read(2) == b"\x1f\x8b" else None
    if compression in ("GZIP", "gzip"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_exact(f: BinaryIO, n: int) -> bytes:
    out = f.read(n)
    while len(out) < n:
        more = f.read(n - len(out))
        if not more:
            break
        out += more
    return out


def iter_tfrecord(path: str | Path, compression: str | None = "auto", verify: bool = True,
                  start: int = 0, count: int | None = None) -> Iterator[bytes]:
    """Yield the data of records ``start, start+1, ...`` (at most ``count``) of a TFRecord file.

    Args:
        path: the .tfrecord(s) file.
        compression: None (uncompressed), "GZIP", or "auto" (GZIP if the file starts with the gzip magic).
        verify: check both CRCs of every yielded record (length CRCs are always checked).
        start, count: record range; skipped records are read but their data CRC is not checked.

    Raises:
        DataFormatError naming the file and record index for truncated files and CRC mismatches;
        MissingDataError if the file does not exist.
    """
    path = require_file(path, "TFRecord")
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
    index = 0
    yielded = 0
    try:
        with _open(path, compression) as f:
            while count is None or yielded < count:
                header = _read_exact(f, 12)
                if not header:
                    return
                if len(header) < 12:
                    raise DataFormatError(f"{path}: truncated record header at record {index}")
                (length,) = struct.unpack("<Q", header[:8])
                (len_crc,) = struct.unpack("<I", header[8:])
                if masked_crc32c(header[:8]) != len_crc:
                    raise DataFormatError(f"{path}: length CRC mismatch at record {index} (corrupt file "
                                          "or wrong compression setting)")
                body = _read_exact(f, length + 4)
                if len(body) < length + 4:
                    raise DataFormatError(f"{path}: truncated record {index} ({len(body)} of {length + 4} bytes)")
                if index >= start:
                    data = body[:length]
                    if verify:
                        (data_crc,) = struct.unpack("<I", body[length:])
                        if masked_crc32c(data) != data_crc:
                            raise DataFormatError(f"{path}: data CRC mismatch at record {index}")
                    yield data
                    yielded += 1
                index += 1
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataFormatError(f"{path}: cannot read record {index}: {e}") from e


def write_tfrecord(path: str | Path, records: Iterable[bytes], compression: str | None = None) -> int:
    """Write ``records`` (bytes each) as a TFRecord file, optionally GZIP-compressed; returns the count."""
    if compression not in (None, "GZIP", "gzip"):
        raise ValueError(f"compression must be None or 'GZIP', got {compression!r}")
    path = Path(path)
    opener = (lambda: gzip.open(path, "wb")) if compression else (lambda: open(path, "wb"))
    n = 0
    with opener() as f:
        for rec in records:
            rec = bytes(rec)
            length = struct.pack("<Q", len(rec))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(rec + struct.pack("<I", masked_crc32c(rec)))
            n += 1
    return n


# ---- protobuf wire format -----------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("malformed varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value or payload start, payload end) for a message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, 0, value, pos
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64 field")
            yield field, 1, pos, pos + 8
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            yield field, 2, pos, pos + n
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32 field")
            yield field, 5, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _packed_varints(payload: bytes) -> np.ndarray:
    """Decode a packed run of varints into int64 (two's complement, as protobuf int64)."""
    b = np.frombuffer(payload, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    ends = b < 0x80
    if not ends[-1]:
        raise ValueError("malformed packed varint list")
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    group = np.cumsum(np.concatenate([[0], ends[:-1]]))  # (bytes,): which varint each byte belongs to
    pos = np.arange(b.size) - starts[group]
    if pos.max() > 9:
        raise ValueError("varint longer than 10 bytes")
    vals = (b & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.bitwise_or.reduceat(vals, starts).view(np.int64)


def _bytes_list(buf: bytes, start: int, end: int, as_uint8: bool):
    # Fast path for the common layout of one byte per value (DeepMind's image/mask): 0x0a 0x01 XX repeated.
    n = end - start
    if as_uint8 and n % 3 == 0 and n:
        a = np.frombuffer(buf, dtype=np.uint8, count=n, offset=start).reshape(-1, 3)
        if (a[:, 0] == 0x0A).all() and (a[:, 1] == 1).all():
            return a[:, 2].copy()
    values = []
    for field, wire, s, e in _fields(buf, start, end):
        if field == 1 and wire == 2:
            values.append(buf[s:e])
    if as_uint8:
        return np.frombuffer(b"".join(values), dtype=np.uint8).copy()
    return values


def _float_list(buf: bytes, start: int, end: int) -> np.ndarray:
    parts = []
    for field, wire, s, e in _fields(buf, start, end):
        if field != 1:
            continue
        if wire == 2:
            if (e - s) % 4:
                raise ValueError("packed float list length is not a multiple of 4")
            parts.append(np.frombuffer(buf, dtype="<f4", count=(e - s) // 4, offset=s))
        elif wire == 5:
            parts.append(np.frombuffer(buf, dtype="<f4", count=1, offset=s))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _int64_list(buf: bytes, start: int, end: int) -> np.ndarray:
    parts = []
    for field, wire, s, e in _fields(buf, start, end):
        if field != 1:
            continue
        if wire == 2:
            parts.append(_packed_varints(buf[s:e]))
        elif wire == 0:
            parts.append(np.array([s], dtype=np.uint64).view(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def parse_example(data: bytes, bytes_as: str = "list") -> dict:
    """Parse a serialized ``tf.train.Example``.

    Args:
        data: the serialized proto (one TFRecord record).
        bytes_as: "list" returns each bytes_list feature as ``list[bytes]``; "uint8" returns it as one uint8
            array, the concatenation of all values (for raw-pixel features stored either as one string or as
            one string per byte, like ``tf.io.decode_raw`` followed by a flatten).

    Returns:
        dict feature name -> ``list[bytes]`` / uint8 array (bytes_list), float32 array (float_list), int64
        array (int64_list), or None for a feature with no kind set.

    Raises:
        ValueError if ``data`` is not a well-formed Example.
    """
    if bytes_as not in ("list", "uint8"):
        raise ValueError(f"bytes_as must be 'list' or 'uint8', got {bytes_as!r}")
    data = bytes(data)
    out: dict = {}
    try:
        for f1, w1, s1, e1 in _fields(data, 0, len(data)):
            if f1 != 1 or w1 != 2:
                continue
            for f2, w2, s2, e2 in _fields(data, s1, e1):  # Features
                if f2 != 1 or w2 != 2:
                    continue
                key, value = None, None
                for f3, w3, s3, e3 in _fields(data, s2, e2):  # map entry
                    if f3 == 1 and w3 == 2:
                        key = data[s3:e3].decode("utf-8")
                    elif f3 == 2 and w3 == 2:
                        value = (s3, e3)
                if key is None:
                    raise ValueError("feature map entry without a key")
                parsed = None
                if value is not None:
                    for f4, w4, s4, e4 in _fields(data, *value):  # Feature (oneof: last one wins)
                        if w4 != 2:
                            continue
                        if f4 == 1:
                            parsed = _bytes_list(data, s4, e4, bytes_as == "uint8")
                        elif f4 == 2:
                            parsed = _float_list(data, s4, e4)
                        elif f4 == 3:
                            parsed = _int64_list(data, s4, e4)
                out[key] = parsed
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed tf.train.Example: {e}") from e
    return out


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        if v < 0x80:
            out.append(v)
            return bytes(out)
        out.append((v & 0x7F) | 0x80)
        v >>= 7


def _enc_len(field: int, payload: bytes) -> bytes:
    return _enc_varint((field << 3) | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: dict) -> bytes:
    """Serialize a ``tf.train.Example``.

    Args:
        features: name -> value, where a list/tuple of bytes becomes a bytes_list, a floating numpy array a
            (packed) float_list of float32, and an integer or bool numpy array a (packed) int64_list.
            Arrays are flattened in C order.

    Returns:
        the serialized proto, as TensorFlow would write it (map entries in sorted key order).
    """
    entries = []
    for key in sorted(features):
        value = features[key]
        if isinstance(value, (list, tuple)):
            if not all(isinstance(v, (bytes, bytearray)) for v in value):
                raise ValueError(f"feature {key!r}: a list must hold bytes values only")
            inner = b"".join(_enc_len(1, bytes(v)) for v in value)
            feature = _enc_len(1, inner)
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            packed = np.ascontiguousarray(value, dtype="<f4").tobytes()
            feature = _enc_len(2, _enc_len(1, packed) if packed else b"")
        elif isinstance(value, np.ndarray) and value.dtype.kind in "iub":
            packed = b"".join(_enc_varint(int(v)) for v in value.ravel().astype(np.int64))
            feature = _enc_len(3, _enc_len(1, packed) if packed else b"")
        else:
            raise ValueError(f"feature {key!r}: unsupported value type {type(value).__name__}")
        entries.append(_enc_len(1, _enc_len(1, key.encode()) + _enc_len(2, feature)))
    return _enc_len(1, b"".join(entries))


def read_examples(path: str | Path, compression: str | None = "auto", bytes_as: str = "list",
                  verify: bool = True, start: int = 0, count: int | None = None) -> Iterator[dict]:
    """Yield parsed Examples (see ``parse_example``) from a TFRecord file (see ``iter_tfrecord``).

    A malformed Example raises DataFormatError naming the file and the record index.
    """
    for i, rec in enumerate(iter_tfrecord(path, compression, verify, start, count)):
        try:
            yield parse_example(rec, bytes_as)
        except ValueError as e:
            raise DataFormatError(f"{path}: record {start + i}: {e}") from e
