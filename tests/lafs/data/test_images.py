"""Image decoding: a JPEG that libjpeg decodes only with a warning is undecodable when asked to be strict."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lafs.data.images import UndecodableImage, decode_image, encode_jpeg
from tests.lafs.data.common import garble, textured


def test_garbled_jpeg_is_undecodable_when_strict(capfd):
    good = encode_jpeg(textured(0))
    bad = garble(good)
    assert decode_image(bad).shape == (112, 112, 3)  # lenient: what OpenCV makes of it
    capfd.readouterr()
    for _ in range(3):  # each of several damaged images in a row (the capture restarts at its beginning)
        with pytest.raises(UndecodableImage, match="Corrupt JPEG data"):
            decode_image(bad, strict=True)
    np.testing.assert_array_equal(decode_image(good, strict=True), decode_image(good))
    assert capfd.readouterr().err == ""  # libjpeg's warning is the error message, not stray stderr


def test_strict_decoding_leaves_other_stderr_output_alone(capfd):
    print("before", file=sys.stderr, flush=True)
    decode_image(encode_jpeg(textured(1)), strict=True)
    print("after", file=sys.stderr, flush=True)
    assert capfd.readouterr().err == "before\nafter\n"
