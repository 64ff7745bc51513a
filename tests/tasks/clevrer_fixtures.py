"""Helpers that write CLEVRER files for tests (lossless MP4 videos, RLE mask proposals), shared by the reader's
tests and the experiment's bad-input tests."""
import av
import numpy as np
import pytest

from tasks.clevrer.real import rle_encode


def write_video(path, frames):
    """A lossless RGB H.264 MP4 of uint8 frames (T, H, W, 3) at 25 fps (decoded frames equal the input)."""
    if "libx264rgb" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx264rgb encoder for lossless MP4 fixtures")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        s.options = {"crf": "0", "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def box(y, x, h, w, height, width):
    """A bool (height, width) mask that is True on the rectangle [y, y + h) x [x, x + w) (clipped)."""
    m = np.zeros((height, width), bool)
    m[max(0, y):y + h, max(0, x):x + w] = True
    return m


def proposal_object(mask, color, material, shape, score=0.99):
    """One detection of a CLEVRER derender proposal file."""
    return {"mask": rle_encode(mask), "color": color, "material": material, "shape": shape, "score": score}
