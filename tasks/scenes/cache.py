"""On-disk cache for deterministic data builds (the generated CLEVR, Multi-dSprites, ClevrTex and CLEVRER sets).

A build is a function that returns a dict of numpy arrays and depends only on (name, version, params). The
result is stored as a compressed ``.npz`` under the cache folder together with a JSON sidecar that records
the name, the generator version, the parameters, the array shapes/dtypes and a SHA-256 checksum of the
``.npz`` bytes. On the next call with the same (name, version, params) the arrays are read back; when the
version or the parameters change, the file name changes and the data is built again. A cache whose sidecar
is missing, unreadable or inconsistent, or whose ``.npz`` does not match the recorded checksum (truncated
or corrupt), is rebuilt with a warning and never silently used.

Both files are written to a temporary name in the cache folder and moved into place with ``os.replace``,
so a crash or a concurrent reader never sees a half-written file. The ``.npz`` is moved first and the
sidecar second: an interrupted write leaves a sidecar whose checksum does not match, which is detected.
A build holds an exclusive lock on ``<stem>.lock`` in the cache folder (``slots.checkpoint.exclusive_lock``):
a second process that wants the same entry meanwhile waits for it, then reads the entry the first one wrote,
so two processes never build one entry at once and the ``.npz`` and its sidecar always come from one build.

Known limits: params must be JSON-serialisable (str/int/float/bool/None, lists/tuples and dicts of them);
arrays must not be object arrays (the cache loads with ``allow_pickle=False``). Reading a valid entry takes no
lock (a read-only cache folder works); building one needs a writable cache folder.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slots.checkpoint import atomic_write, exclusive_lock

__all__ = ["cached", "default_cache_dir", "cache_paths", "CacheWarning"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CacheWarning(UserWarning):
    """Emitted when a cache entry is found damaged or stale and is rebuilt."""


def default_cache_dir() -> Path:
    """The cache folder: ``$SA_MESH_CACHE`` if set and non-empty, else ``~/.cache/sa-mesh``."""
    env = os.environ.get("SA_MESH_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sa-mesh"


def _canonical(value: Any, where: str) -> Any:
    """JSON-ready copy of a params value with tuples as lists; ValueError for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError(f"cache params: {where} is {value!r}; only finite floats are allowed")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"cache params: key {k!r} in {where} is not a string")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    raise ValueError(f"cache params: {where} has type {type(value).__name__}, which is not JSON-serialisable")


def cache_paths(name: str, params: dict, version: str, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of the ``.npz`` and the ``.json`` sidecar for one cache entry (they need not exist).

    The file stem is ``<name>-<first 16 hex digits of sha256(name, version, params)>``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"cache name {name!r} must be a non-empty string of letters, digits, '_', '.', '-'")
    if not isinstance(version, str) or not version:
        raise ValueError(f"cache version must be a non-empty string, got {version!r}")
    if not isinstance(params, dict):
        raise ValueError(f"cache params must be a dict, got {type(params).__name__}")
    key = json.dumps({"name": name, "version": version, "params": _canonical(params, "params")},
                     sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{name}-{digest}.npz", folder / f"{name}-{digest}.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _try_load(npz_path: Path, side_path: Path, name: str, version: str, params: Any) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a CacheWarning when files exist but are unusable)."""
    if not npz_path.exists() and not side_path.exists():
        return None

    def stale(reason: str) -> None:
        warnings.warn(f"cache entry {npz_path} is unusable ({reason}); rebuilding it", CacheWarning, stacklevel=4)

    if not npz_path.exists():
        stale("the .npz file is missing")
        return None
    if not side_path.exists():
        stale(f"the sidecar {side_path.name} is missing")
        return None
    try:
        side = json.loads(side_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        stale(f"the sidecar {side_path.name} cannot be read: {e}")
        return None
    if not isinstance(side, dict):
        stale(f"the sidecar {side_path.name} is not a JSON object")
        return None
    if side.get("name") != name or side.get("version") != version or side.get("params") != params:
        stale("the sidecar records a different name, version or params")
        return None
    checksum = _sha256_file(npz_path)
    if side.get("sha256") != checksum:
        stale("its checksum does not match the sidecar (truncated or corrupt)")
        return None
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # any decoding failure means the file cannot be trusted
        stale(f"it cannot be decoded: {e}")
        return None
    expected = side.get("arrays", {})
    got = {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()}
    if got != expected:
        stale("its arrays differ from those recorded in the sidecar")
        return None
    return arrays


def cached(name: str, params: dict, version: str, build: Callable[[], dict[str, np.ndarray]],
           cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Return ``build()``'s arrays, from the cache when a valid entry exists, else built and stored.

    Args:
        name: short identifier of the data set, e.g. ``"multi_dsprites-train"`` (letters, digits, ``_.-``).
        params: every parameter the build depends on (seed, count, sizes...), JSON-serialisable.
        version: the generator's version string; bump it whenever the generator's output changes.
        build: zero-argument function returning ``dict[str, np.ndarray]`` (any shapes, no object dtype);
            it shows its own progress bar.
        cache_dir: folder for the cache files; default ``default_cache_dir()``. Created if needed.

    Returns:
        dict of numpy arrays, exactly as ``build()`` returned them (same keys, shapes, dtypes, values).

    Raises:
        ValueError: bad name/version/params, or ``build`` returned something other than a dict of
            non-object numpy arrays with string keys.
    """
    npz_path, side_path = cache_paths(name, params, version, cache_dir)
    canon = _canonical(params, "params")
    seen = _state(npz_path, side_path)
    arrays = _try_load(npz_path, side_path, name, version, canon)
    if arrays is not None:
        return arrays

    npz_path.parent.mkdir(parents=True, exist_ok=True)

    def waiting(pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        print(f"waiting for {who}, which is building the cache entry {npz_path}", file=sys.stderr, flush=True)

    with exclusive_lock(npz_path.with_suffix(".lock"), f"cache entry {npz_path}", wait=True, on_wait=waiting):
        if _state(npz_path, side_path) != seen:  # another process wrote the entry while this one waited
            arrays = _try_load(npz_path, side_path, name, version, canon)
            if arrays is not None:
                return arrays
        return _build_and_store(npz_path, side_path, name, version, canon, build)


def _state(*paths: Path) -> tuple:
    """(inode, size, mtime) of each path (None where missing): whether the files changed since."""
    states = []
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            states.append(None)
        else:
            states.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(states)


def _build_and_store(npz_path: Path, side_path: Path, name: str, version: str, canon: Any,
                     build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``build()``, checked and written to the entry's two files (under the entry's lock)."""
    result = build()
    if not isinstance(result, dict) or not result:
        raise ValueError(f"cache build for {name!r} must return a non-empty dict of numpy arrays, "
                         f"got {type(result).__name__}")
    for k, v in result.items():
        if not isinstance(k, str) or not k.isidentifier() or k in ("file", "allow_pickle"):
            raise ValueError(f"cache build for {name!r}: key {k!r} must be a Python identifier string "
                             "other than 'file' and 'allow_pickle'")
        if not isinstance(v, np.ndarray):
            raise ValueError(f"cache build for {name!r}: value {k!r} is {type(v).__name__}, not a numpy array")
        if v.dtype.hasobject:
            raise ValueError(f"cache build for {name!r}: array {k!r} has object dtype, which cannot be cached")

    atomic_write(npz_path, lambda f: np.savez_compressed(f, **result))
    sidecar = {
        "name": name,
        "version": version,
        "params": canon,
        "sha256": _sha256_file(npz_path),
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in result.items()},
    }
    atomic_write(side_path, lambda f: f.write(json.dumps(sidecar, indent=1, sort_keys=True).encode()))
    return result
