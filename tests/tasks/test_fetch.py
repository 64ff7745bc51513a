"""Tests of tasks.fetch against a local HTTP server (Python's http.server in a thread, with Range support written
here) serving fixture archives in the publishers' layouts: the extracted folders are read by the tasks' own
readers; a cut download is resumed with a Range request; a wrong digest removes the file and names both
digests; unsafe archives, HTTP errors and servers without Range support are handled."""
import gzip
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_clevr_data import _write_real_tree
from test_clevrtex_data import _write_tree as _write_clevrtex_tree

from tasks import fetch as F
from tasks.clevr import read_clevr
from tasks.clevrtex import read_clevrtex
from tasks.multi_dsprites.data import _find_real_file


class _Handler(BaseHTTPRequestHandler):
    """GET /<name> from ``server.files``; ``Range: bytes=N-`` is honoured unless ``server.ignore_range``; a name in
    ``server.cuts`` is cut after that many body bytes, once (the connection closes)."""

    def do_GET(self):
        srv = self.server
        name, rng = self.path.lstrip("/"), self.headers.get("Range")
        srv.requests.append((name, rng))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cuts.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A server on 127.0.0.1 (attributes ``files``, ``cuts``, ``ignore_range``, ``requests``, ``url``)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cuts, srv.ignore_range, srv.requests = {}, {}, False, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_gz(root, names=None) -> bytes:
    """A .tar.gz of the files under ``root`` (paths relative to it), or of ``names`` {member: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if names is None:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                tar.add(path, arcname=str(path.relative_to(root)))
        else:
            for name, data in names.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _one_file_table(name: str, sha256: str | None, size: int | None = None, into: str = "data") -> dict:
    """A table of one data set ``x`` with one file ``name`` (its URL is replaced by ``url_base``)."""
    source = F.Source(f"https://publisher.invalid/{name}", into=into, sha256=sha256, size=size)
    return {"x": F.DataSet((source,), data_dir=into, command="python -m tasks.x --data-dir {data_dir}",
                           page="https://publisher.invalid", approx_size="tiny")}


def _quiet(messages):
    return messages.append


def test_clevr_from_the_command_line_is_read_by_the_clevr_reader(server, tmp_path, capsys):
    _, images, scenes = _write_real_tree(tmp_path / "src", n=2)
    src = tmp_path / "src"
    server.files["CLEVR_v1.0.zip"] = _zip({str(p.relative_to(src)): p.read_bytes()
                                           for p in sorted(src.rglob("*")) if p.is_file()})
    to = tmp_path / "data"
    assert F.main(["clevr", "--to", str(to), "--url-base", server.url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no SHA-256 is published" in out and f"done: python -m tasks.clevr --data-dir {to}" in out
    data, got = read_clevr(to, "val", image_size=None, progress=False)  # the layout --data-dir expects
    assert np.array_equal(data.images.numpy(), images) and got == scenes
    assert not (to / "downloads" / "CLEVR_v1.0.zip").exists()  # archive removed after extraction
    assert (to / "downloads" / "CLEVR_v1.0.zip.extracted").exists()
    n_requests = len(server.requests)
    assert F.main(["clevr", "--to", str(to), "--url-base", server.url, "--no-progress"]) == 0
    assert len(server.requests) == n_requests and "already extracted" in capsys.readouterr().out


def test_a_cut_download_is_resumed_with_a_range_request(server, tmp_path):
    payload = _zip({f"f{i}.bin": bytes(range(256)) * 40 for i in range(4)})
    server.files["a.zip"] = payload
    server.cuts["a.zip"] = 5000
    table = _one_file_table("a.zip", hashlib.sha256(payload).hexdigest(), size=len(payload))
    messages = []
    with pytest.raises(F.FetchError, match=r"stopped after 5000 of \d+ bytes.*a.zip.part is kept: rerun") as e:
        F.fetch("x", tmp_path, server.url, retries=0, progress=False, datasets=table, log=_quiet(messages))
    assert str(tmp_path) in str(e.value)
    part = tmp_path / "downloads" / "a.zip.part"
    assert part.read_bytes() == payload[:5000]

    F.fetch("x", tmp_path, server.url, retries=0, progress=False, datasets=table, log=_quiet(messages))
    assert server.requests == [("a.zip", None), ("a.zip", "bytes=5000-")]
    assert "a.zip: resuming at byte 5,000" in messages
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["f0.bin", "f1.bin", "f2.bin", "f3.bin"]
    assert (tmp_path / "data" / "f3.bin").read_bytes() == bytes(range(256)) * 40
    assert not part.exists()


def test_retries_resume_within_one_run(server, tmp_path):
    payload = _zip({"f.bin": bytes(5000)})
    server.files["a.zip"] = payload
    server.cuts["a.zip"] = 100
    table = _one_file_table("a.zip", hashlib.sha256(payload).hexdigest())
    F.fetch("x", tmp_path, server.url, retries=1, progress=False, datasets=table, log=_quiet([]))
    assert server.requests == [("a.zip", None), ("a.zip", "bytes=100-")]
    assert (tmp_path / "data" / "f.bin").read_bytes() == bytes(5000)


def test_a_wrong_digest_removes_the_file_and_names_both_digests(server, tmp_path):
    payload = _zip({"f.bin": b"hello"})
    server.files["a.zip"] = payload
    wrong = "ab" * 32
    table = _one_file_table("a.zip", wrong)
    with pytest.raises(F.FetchError) as e:
        F.fetch("x", tmp_path, server.url, progress=False, datasets=table, log=_quiet([]))
    message = str(e.value)
    assert message.startswith("a.zip: SHA-256 mismatch") and wrong in message
    assert hashlib.sha256(payload).hexdigest() in message and "removed" in message
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == []  # neither the file nor a .part
    assert not (tmp_path / "data").exists()


def test_a_wrong_size_removes_the_file(server, tmp_path):
    server.files["a.zip"] = _zip({"f.bin": b"hello"})
    table = _one_file_table("a.zip", None, size=3)
    with pytest.raises(F.FetchError, match=r"a.zip: \d+ bytes, but its publisher states 3; the file was removed"):
        F.fetch("x", tmp_path, server.url, progress=False, datasets=table, log=_quiet([]))
    assert not list((tmp_path / "downloads").iterdir())


def test_without_a_published_digest_it_says_so_and_checks_the_size(server, tmp_path):
    payload = b"\x00" * 1234
    server.files["plain.bin"] = payload
    messages = []
    F.fetch("x", tmp_path, server.url, progress=False, datasets=_one_file_table("plain.bin", None),
            log=_quiet(messages))
    digest = hashlib.sha256(payload).hexdigest()
    assert (f"plain.bin: no SHA-256 is published for this file, so only its size was checked (against the "
            f"server's, 1234 bytes); its SHA-256 is {digest}") in messages
    assert (tmp_path / "data" / "plain.bin").read_bytes() == payload  # not an archive: moved as it is


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    payload = _zip({"f.bin": b"x" * 3000})
    server.files["a.zip"], server.ignore_range = payload, True
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "a.zip.part").write_bytes(b"junk from another file")
    F.fetch("x", tmp_path, server.url, progress=False,
            datasets=_one_file_table("a.zip", hashlib.sha256(payload).hexdigest()), log=_quiet([]))
    assert server.requests == [("a.zip", "bytes=22-")]
    assert (tmp_path / "data" / "f.bin").read_bytes() == b"x" * 3000


def test_a_partial_file_that_is_already_whole_gets_416_and_is_kept(server, tmp_path):
    payload = _zip({"f.bin": b"y" * 100})
    server.files["a.zip"] = payload
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "a.zip.part").write_bytes(payload)
    F.fetch("x", tmp_path, server.url, progress=False,
            datasets=_one_file_table("a.zip", hashlib.sha256(payload).hexdigest()), log=_quiet([]))
    assert server.requests == [("a.zip", f"bytes={len(payload)}-")]
    assert (tmp_path / "data" / "f.bin").read_bytes() == b"y" * 100


@pytest.mark.parametrize("packing", ["byte-split", "separate-archives"])
def test_clevrtex_parts_are_joined_and_read_by_the_clevrtex_reader(server, tmp_path, packing):
    src = tmp_path / "src"
    _, images, _ = _write_clevrtex_tree(src, n=10)
    if packing == "byte-split":  # one .tar.gz cut into 5 pieces
        blob = _tar_gz(src)
        cuts = np.linspace(0, len(blob), 6).astype(int)
        parts = [blob[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    else:  # 5 complete .tar.gz files, two images each
        files = sorted(p for p in src.rglob("*") if p.is_file())
        parts = [_tar_gz(src, {str(p.relative_to(src)): p.read_bytes() for p in files[i::5]}) for i in range(5)]
    for i, part in enumerate(parts, 1):
        server.files[f"clevrtex_full_part{i}.tar.gz"] = part
    to = tmp_path / "data"
    assert F.main(["clevrtex", "--to", str(to), "--url-base", server.url, "--no-progress"]) == 0
    data = read_clevrtex(to, "train", variant="full", size=None, crop=False, progress=False)
    assert np.array_equal(data.images.numpy(), images[2:, ..., :3].transpose(0, 3, 1, 2))


def test_clevrtex_ood_lands_where_the_reader_looks(server, tmp_path):
    src = tmp_path / "src"
    _write_clevrtex_tree(src, n=3, variant="outd")
    server.files["clevrtex_outd.tar.gz"] = _tar_gz(src)
    data_dir = F.fetch("clevrtex_ood", tmp_path / "data", server.url, progress=False, log=_quiet([]))
    assert data_dir == tmp_path / "data" / "clevrtex_outd"
    assert len(read_clevrtex(data_dir, "test", variant="outd", progress=False).ids) == 3


def test_multi_dsprites_file_lands_where_the_reader_looks(server, tmp_path):
    name = "multi_dsprites_colored_on_grayscale.tfrecords"
    server.files[name] = gzip.compress(b"records")
    data_dir = F.fetch("multi_dsprites", tmp_path, server.url, progress=False, log=_quiet([]))
    assert _find_real_file(data_dir, "colored_on_grayscale") == data_dir / name


def test_clevrer_archives_land_in_the_readers_layout(server, tmp_path):
    server.files.update({
        "video_train.zip": _zip({"video_00000-01000/video_00000.mp4": b"v0"}),
        "video_validation.zip": _zip({"video_10000-11000/video_10000.mp4": b"v1"}),
        "video_test.zip": _zip({"video_15000-16000/video_15000.mp4": b"v2"}),
        # a leading folder named like the target is not repeated
        "derender_proposals.zip": _zip({"derender_proposals/proposal_00000.json": b"{}"}),
        "annotation_train.zip": _zip({"annotation_00000-01000/annotation_00000.json": b"{}"}),
        "annotation_validation.zip": _zip({"annotation_10000-11000/annotation_10000.json": b"{}"}),
    })
    root = F.fetch("clevrer", tmp_path, server.url, progress=False, log=_quiet([]))
    assert root == tmp_path / "clevrer"
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert found == ["annotation_train/annotation_00000-01000/annotation_00000.json",
                     "annotation_validation/annotation_10000-11000/annotation_10000.json",
                     "derender_proposals/proposal_00000.json",
                     "video_test/video_15000-16000/video_15000.mp4",
                     "video_train/video_00000-01000/video_00000.mp4",
                     "video_validation/video_10000-11000/video_10000.mp4"]


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_an_archive_member_outside_the_folder_is_refused(server, tmp_path, member):
    server.files["a.zip"] = _zip({member: b"x"})
    with pytest.raises(F.FetchError, match="would be written outside"):
        F.fetch("x", tmp_path / "to", server.url, progress=False, datasets=_one_file_table("a.zip", None),
                log=_quiet([]))
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_tar_link_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    server.files["a.tar.gz"] = buf.getvalue()
    with pytest.raises(F.FetchError, match="'data/link' is a link"):
        F.fetch("x", tmp_path, server.url, progress=False, datasets=_one_file_table("a.tar.gz", None),
                log=_quiet([]))


def test_errors_name_the_problem(server, tmp_path, capsys):
    with pytest.raises(F.FetchError, match=r"a.zip: HTTP 404"):
        F.fetch("x", tmp_path, server.url, progress=False, datasets=_one_file_table("a.zip", None), log=_quiet([]))
    server.files["a.zip"] = b"not a zip"
    with pytest.raises(F.FetchError, match="a.zip: not a readable zip archive"):
        F.fetch("x", tmp_path, server.url, progress=False, datasets=_one_file_table("a.zip", None), log=_quiet([]))
    with pytest.raises(ValueError, match="unknown data set 'y'"):
        F.fetch("y", tmp_path, server.url, datasets=_one_file_table("a.zip", None))
    (tmp_path / "file").write_text("")
    assert F.main(["clevr", "--to", str(tmp_path / "file"), "--url-base", server.url]) == 2
    assert "is a file; choose a folder" in capsys.readouterr().err
    assert F.main(["clevr", "--to", str(tmp_path / "d"), "--url-base", "http://127.0.0.1:9", "--no-progress"]) == 2
    assert "CLEVR_v1.0.zip: cannot connect" in capsys.readouterr().err


def test_the_table_holds_no_invented_digests():
    for spec in F.DATASETS.values():
        for source in spec.files:
            assert source.url.startswith(("https://", "http://")) and source.name in source.url
            # no publisher publishes one; a digest put here must be the publisher's, as 64 hex digits
            assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256)
    assert [f.name for f in F.DATASETS["clevrtex"].files] == [f"clevrtex_full_part{i}.tar.gz" for i in range(1, 6)]
