"""Download the real data sets into the layout ``--data-dir`` expects: ``python -m tasks.fetch NAME --to DIR``.

``DATASETS`` is the one table of what is fetched: per data set its files (the publishers' URLs, the SHA-256
digest and exact size where the publisher publishes them), where each file is extracted, the ``--data-dir``
to pass afterwards and the command that reads it. What happens, per file:

1. download into ``DIR/downloads/<file>.part`` with urllib (standard library only); a ``.part`` left by a cut
   download is resumed with an HTTP ``Range`` request (``--retries`` times in one run, and again by rerunning
   the command); a server that ignores ``Range`` sends the whole file, which replaces the partial one;
2. verify: the byte count against the server's ``Content-Length`` and the table's size, and the SHA-256
   against the published digest. None of the real publishers publishes a SHA-256 (or an exact size), so for
   them the table holds None and the fetcher says so and checks the size against the server only, printing
   the digest it computed so that it can be recorded. A complete file with the wrong digest is removed and
   the error names the file and both digests (a ``.part`` is never removed: it is resumed);
3. extract (``.zip``, ``.tar.gz``; the parts of a split archive are joined in order and read as one stream)
   into ``DIR/<into>``, refusing absolute paths, ``..`` and links; a leading folder named like ``<into>``
   itself is not repeated. Other files are moved there as they are. The archive is then removed
   (``--keep-archives`` keeps it) and ``DIR/downloads/<file>.extracted`` marks the step as done, so a rerun
   skips finished files.

Known limits: the real hosts were not reachable where this was written, so the table's URLs come from the
publishers' pages and download scripts and the extraction layout from their documented folder structure;
the tests run the whole path against a local HTTP server with fixture archives.
"""
import argparse
import gzip
import hashlib
import io
import shutil
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from kernels import check_int

__all__ = ["Source", "DataSet", "DATASETS", "FetchError", "fetch", "main"]

CHUNK = 1 << 20  # bytes per read and per hash update
DOWNLOADS = "downloads"


class FetchError(Exception):
    """A download, a verification or an extraction failed; the message names the file and what to do."""


@dataclass(frozen=True)
class Source:
    """One file of a data set as its publisher serves it.

    Attributes:
        url: where the publisher serves it; the file name is the URL's last component.
        into: folder under ``--to`` that the archive is extracted into (a plain file is moved there).
        sha256: the publisher's SHA-256 digest, or None where none is published.
        size: the exact size in bytes where the publisher states it, else None.
    """

    url: str
    into: str
    sha256: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DataSet:
    """A data set: its files and what to tell the user about it.

    Attributes:
        files: the files, in order. joined: the files are the parts of one archive (joined in order, extracted
            into the first file's ``into``).
        data_dir: the ``--data-dir`` to pass afterwards, relative to ``--to``. command: the command reading it.
        page: the publisher's page. approx_size: the download size the publisher states (approximate).
    """

    files: tuple[Source, ...]
    data_dir: str
    command: str
    page: str
    approx_size: str
    joined: bool = False


_CLEVRTEX = "https://thor.robots.ox.ac.uk/datasets/clevrtex"
_CLEVRER = "http://data.csail.mit.edu/clevrer"
# No publisher below publishes a SHA-256 or an exact byte count: digests and sizes are None (see README, "Data").
DATASETS: dict[str, DataSet] = {
    "clevr": DataSet(
        (Source("https://dl.fbaipublicfiles.com/clevr/CLEVR_v1.0.zip", into=""),), data_dir="",
        command="python -m tasks.clevr --data-dir {data_dir}", page="https://cs.stanford.edu/people/jcjohns/clevr/",
        approx_size="about 18 GB"),
    "multi_dsprites": DataSet(
        (Source("https://storage.googleapis.com/multi-object-datasets/multi_dsprites/"
                "multi_dsprites_colored_on_grayscale.tfrecords", into="multi_dsprites"),),
        data_dir="multi_dsprites", command="python -m tasks.multi_dsprites --data-dir {data_dir}",
        page="https://github.com/google-deepmind/multi_object_datasets", approx_size="between 500 MB and 1 GB"),
    "clevrtex": DataSet(
        tuple(Source(f"{_CLEVRTEX}/clevrtex_full_part{i}.tar.gz", into="") for i in range(1, 6)), data_dir="",
        command="python -m tasks.clevrtex --data-dir {data_dir}", page="https://www.robots.ox.ac.uk/~vgg/data/clevrtex/",
        approx_size="5 parts of about 4.7 GB", joined=True),
    "clevrtex_ood": DataSet(
        (Source(f"{_CLEVRTEX}/clevrtex_outd.tar.gz", into=""),), data_dir="clevrtex_outd",
        command="read with tasks.clevrtex.read_clevrtex({data_dir!r}, variant='outd')",
        page="https://www.robots.ox.ac.uk/~vgg/data/clevrtex/", approx_size="not stated here"),
    "clevrtex_camo": DataSet(
        (Source(f"{_CLEVRTEX}/clevrtex_camo.tar.gz", into=""),), data_dir="clevrtex_camo",
        command="read with tasks.clevrtex.read_clevrtex({data_dir!r}, variant='camo')",
        page="https://www.robots.ox.ac.uk/~vgg/data/clevrtex/", approx_size="not stated here"),
    "clevrer": DataSet(
        (Source(f"{_CLEVRER}/videos/train/video_train.zip", into="clevrer/video_train"),
         Source(f"{_CLEVRER}/videos/validation/video_validation.zip", into="clevrer/video_validation"),
         Source(f"{_CLEVRER}/videos/test/video_test.zip", into="clevrer/video_test"),
         Source(f"{_CLEVRER}/derender_proposals.zip", into="clevrer/derender_proposals"),
         Source(f"{_CLEVRER}/annotations/train/annotation_train.zip", into="clevrer/annotation_train"),
         Source(f"{_CLEVRER}/annotations/validation/annotation_validation.zip", into="clevrer/annotation_validation")),
        data_dir="clevrer", command="python -m tasks.clevrer --data-dir {data_dir}",
        page="http://clevrer.csail.mit.edu/", approx_size="not stated here"),
}


# ---------------------------------------------------------------------------------------------------
# Download


class _Cut(Exception):
    """The connection ended before the whole file arrived (``have`` of ``total`` bytes are in the .part)."""

    def __init__(self, have: int, total: int | None):
        super().__init__(f"{have} of {total if total is not None else '?'} bytes")
        self.have, self.total = have, total


def _content_range_total(header: str | None) -> int | None:
    """The total of a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header, else None."""
    if header and "/" in header and header.rsplit("/", 1)[1].strip().isdigit():
        return int(header.rsplit("/", 1)[1])
    return None


def _open(url: str, start: int):
    """urlopen ``url`` from byte ``start`` (a ``Range`` request when start > 0); HTTP errors pass through."""
    headers = {"User-Agent": "sa-mesh-fetch"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=60)
    except HTTPError:
        raise  # the caller reads its status (416: the partial file may be whole)
    except (URLError, OSError) as e:
        raise FetchError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None


def _get(url: str, part: Path, progress: bool) -> int:
    """Bring ``part`` up to the whole file at ``url``, resuming from its current length; returns the total size.

    Raises:
        _Cut if the connection ends early (the bytes received stay in ``part``); FetchError for HTTP errors.
    """
    have = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, have)
    except HTTPError as e:
        total = _content_range_total(e.headers.get("Content-Range")) if e.code == 416 else None
        if e.code == 416 and total == have:  # the partial file is already whole
            return have
        if e.code == 416:  # a partial file longer than the file, or of another file: start again
            part.unlink()
            return _get(url, part, progress)
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    with resp:
        if resp.status == 206:
            total = _content_range_total(resp.headers.get("Content-Range"))
            start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if start != str(have):
                raise FetchError(f"{url}: the server resumed at byte {start}, not {have}; delete {part} and rerun")
            mode = "ab"
        else:  # 200: the whole file (a server without Range support restarts it)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have, mode = 0, "wb"
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5],
                                         disable=not progress) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
            except OSError as e:  # reset, timeout, http.client.IncompleteRead
                raise _Cut(have, total) from e
    if total is not None and have != total:
        raise _Cut(have, total)
    return have


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, source: Source, log) -> None:
    """Check a downloaded file's size and SHA-256 against the table; a wrong file is removed (FetchError)."""
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        path.unlink()
        raise FetchError(f"{path.name}: {size} bytes, but its publisher states {source.size}; the file was "
                         "removed, rerun to download it again")
    digest = _sha256(path)
    if source.sha256 is None:
        log(f"{path.name}: no SHA-256 is published for this file, so only its size was checked (against the "
            f"server's, {size} bytes); its SHA-256 is {digest}")
    elif digest != source.sha256.lower():
        path.unlink()
        raise FetchError(f"{path.name}: SHA-256 mismatch: the publisher's digest is {source.sha256}, the "
                         f"downloaded file's is {digest}; the file was removed, rerun to download it again")


def download(source: Source, url: str, downloads: Path, retries: int, progress: bool, log) -> Path:
    """Download and verify one file into ``downloads/`` (see the module docstring); returns its path.

    Raises:
        FetchError naming the file: a download still cut after ``retries`` resumptions (the .part is kept),
        an HTTP error, or a wrong size or digest (the file is removed).
    """
    path = downloads / source.name
    if path.exists():
        log(f"{path.name}: already downloaded")
        _verify(path, source, log)
        return path
    part = path.with_name(path.name + ".part")
    for attempt in range(retries + 1):
        if part.exists():
            log(f"{path.name}: resuming at byte {part.stat().st_size:,}")
        try:
            _get(url, part, progress)
            break
        except _Cut as e:
            if attempt == retries:
                raise FetchError(f"{url}: the download stopped after {e}; the partial file {part} is kept: rerun "
                                 "the same command to resume it") from None
    part.rename(path)
    _verify(path, source, log)
    return path


# ---------------------------------------------------------------------------------------------------
# Extraction


class _Joined(io.RawIOBase):
    """The files ``paths`` read as one stream, in order (the parts of a split archive)."""

    def __init__(self, paths: list[Path]):
        self._paths, self._file = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _target(dest: Path, member: str, archive: str) -> Path | None:
    """Where archive member ``member`` goes under ``dest`` (None for the folder ``dest`` itself); a leading folder
    with ``dest``'s own name is dropped. Raises FetchError for an absolute path or one leaving ``dest``."""
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise FetchError(f"{archive}: member {member!r} would be written outside {dest}; not extracting it")
    if parts and parts[0] == dest.name:
        parts = parts[1:]
    return dest.joinpath(*parts) if parts else None


def _write(stream, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        shutil.copyfileobj(stream, f, CHUNK)


def _extract_zip(path: Path, dest: Path) -> int:
    count = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                target = _target(dest, info.filename, path.name)
                if target is None or info.is_dir():
                    (target or dest).mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as src:
                    _write(src, target)
                count += 1
    except (zipfile.BadZipFile, EOFError) as e:
        raise FetchError(f"{path.name}: not a readable zip archive ({e})") from None
    return count


def _tar_members(paths: list[Path]) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The members of the gzip-compressed tar formed by ``paths`` joined in order (several gzip members and
    several tar archives in a row are read through)."""
    with _Joined(paths) as raw, gzip.GzipFile(fileobj=io.BufferedReader(raw, CHUNK)) as gz, \
            tarfile.open(fileobj=gz, mode="r|", ignore_zeros=True) as tar:
        for member in tar:
            yield member, tar


def _extract_tar(paths: list[Path], dest: Path) -> int:
    count, name = 0, paths[0].name
    try:
        for member, tar in _tar_members(paths):
            target = _target(dest, member.name, name)
            if member.isdir() or target is None:
                (target or dest).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                _write(tar.extractfile(member), target)
                count += 1
            else:
                raise FetchError(f"{name}: member {member.name!r} is a link or a device; not extracting it")
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise FetchError(f"{name}: not a readable .tar.gz archive ({e})") from None
    return count


def _unpack(paths: list[Path], dest: Path) -> str:
    """Extract an archive (or the joined parts of one) into ``dest``, or move a plain file there; what was done."""
    dest.mkdir(parents=True, exist_ok=True)
    name = paths[0].name
    if name.endswith(".zip"):
        return f"{_extract_zip(paths[0], dest):,} files extracted into {dest}"
    if name.endswith((".tar.gz", ".tgz")):
        return f"{_extract_tar(paths, dest):,} files extracted into {dest}"
    shutil.move(str(paths[0]), dest / name)
    return f"moved to {dest / name}"


# ---------------------------------------------------------------------------------------------------
# Entry points


def fetch(name: str, to: str | Path, url_base: str | None = None, retries: int = 3, keep_archives: bool = False,
          progress: bool = True, datasets: Mapping[str, DataSet] = DATASETS, log=print) -> Path:
    """Download, verify and extract data set ``name`` under ``to``; returns the folder to pass as ``--data-dir``.

    Args:
        url_base: fetch every file from ``<url_base>/<file name>`` instead of its publisher (a mirror, a test
            server).
        retries: resumptions of a cut download within this call. keep_archives: keep the downloaded archives.
        datasets: the table (``DATASETS``; tests pass their own). log: called with each message.

    Raises:
        FetchError naming the file and what to do (see :func:`download`; an unreadable or unsafe archive);
        ValueError for an unknown name or a bad argument.
    """
    if name not in datasets:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(datasets)}")
    check_int(retries, "retries", 0)
    spec, root = datasets[name], Path(to).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--to {root} is a file; choose a folder")
    downloads = root / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    groups = [list(spec.files)] if spec.joined else [[f] for f in spec.files]
    for group in groups:
        done = downloads / f"{group[0].name}.extracted"
        if done.exists():
            log(f"{group[0].name}: already extracted ({done.read_text().strip()})")
            continue
        paths = []
        for source in group:
            url = f"{url_base.rstrip('/')}/{source.name}" if url_base else source.url
            paths.append(download(source, url, downloads, retries, progress, log))
        what = _unpack(paths, root / group[0].into)
        log(f"{group[0].name}{' (and its other parts)' if len(group) > 1 else ''}: {what}")
        done.write_text(what + "\n")
        if not keep_archives:
            for p in paths:
                p.unlink(missing_ok=True)
    data_dir = root / spec.data_dir
    log(f"done: {spec.command.format(data_dir=str(data_dir))}")
    return data_dir


def _table() -> str:
    lines = []
    for name, spec in DATASETS.items():
        digests = "published" if all(f.sha256 for f in spec.files) else "not published (size checked only)"
        lines.append(f"{name}: {len(spec.files)} file(s), {spec.approx_size}; SHA-256 {digests}; {spec.page}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m tasks.fetch NAME --to DIR``. Exit status: 0 when done, 2 for bad arguments or a failed
    download, verification or extraction (the message says what to do), 130 after Ctrl-C (rerun to resume)."""
    p = argparse.ArgumentParser(prog="python -m tasks.fetch", description=__doc__.split("\n\n")[0],
                                epilog="data sets:\n" + _table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(DATASETS), help="the data set")
    p.add_argument("--to", required=True, help="folder to download and extract into (created)")
    p.add_argument("--url-base", help="fetch every file from URL_BASE/<file name> (a mirror) instead of its publisher")
    p.add_argument("--retries", type=int, default=3, help="resumptions of a cut download before giving up")
    p.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives after extraction")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        fetch(args.name, args.to, args.url_base, args.retries, args.keep_archives, not args.no_progress)
    except (FetchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
