import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from lafs.data.pairs import decode_entry, load_bin, read_bin, write_bin
from lafs.errors import DataError
from tests.conftest import run_with_memory_limit


def gradient(seed: int, size: int = 32) -> np.ndarray:
    """A smooth H x W x 3 uint8 RGB image (JPEG keeps smooth images close)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = [x * 200 + seed * 10, y * 200 + 20, (x + y) * 100 + seed * 5]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray) -> np.ndarray:
    """What insightface's build_eval_pack.py stores: cv2.imencode's uint8 buffer of a BGR image."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer


def images_and_labels(pairs: int = 3) -> tuple[list[np.ndarray], list[bool]]:
    return [gradient(i) for i in range(2 * pairs)], [i % 2 == 0 for i in range(pairs)]


def insightface_file(path, entries, issame, protocol: int = pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps((entries, issame), protocol=protocol))
    return path


def assert_close(decoded: list[np.ndarray], originals: list[np.ndarray]) -> None:
    assert len(decoded) == len(originals)
    for image, original in zip(decoded, originals, strict=True):
        assert image.shape == original.shape and image.dtype == np.uint8
        assert np.abs(image.astype(int) - original.astype(int)).mean() < 3  # JPEG is lossy


def test_round_trip(tmp_path):
    images, issame = images_and_labels()
    path = tmp_path / "sub" / "set.bin"
    write_bin(path, list(zip(images[0::2], images[1::2], strict=True)), issame)
    decoded, labels = load_bin(path)
    assert labels.dtype == bool and labels.tolist() == issame
    assert_close(decoded, images)
    assert [p.name for p in path.parent.iterdir()] == ["set.bin"]  # no temporary file left behind
    raw, _ = read_bin(path)
    assert all(isinstance(entry, bytes) for entry in raw)
    assert pickle.loads(path.read_bytes())[1] == issame  # plain pickle (what insightface runs) reads it too


def test_colour_order_is_rgb(tmp_path):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    write_bin(tmp_path / "red.bin", [(red, red)], [True])
    decoded, _ = load_bin(tmp_path / "red.bin")
    assert decoded[0][..., 0].mean() > 240 and decoded[0][..., 1:].mean() < 15
    # The JPEG itself is an ordinary red image: OpenCV (BGR) sees red in its last channel.
    raw, _ = read_bin(tmp_path / "red.bin")
    bgr = cv2.imdecode(np.frombuffer(raw[0], np.uint8), cv2.IMREAD_COLOR)
    assert bgr[..., 2].mean() > 240 and bgr[..., :2].mean() < 15


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["bytes", "array", "column"])
def test_reads_files_written_the_insightface_way(tmp_path, protocol, kind):
    images, issame = images_and_labels()
    buffers = [jpeg(image) for image in images]
    entries = {
        "bytes": [buffer.tobytes() for buffer in buffers],  # lfw2pack.py: the image files' bytes
        "array": [np.frombuffer(buffer.tobytes(), np.uint8) for buffer in buffers],  # build_eval_pack.py
        "column": [buffer.reshape(-1, 1) for buffer in buffers],  # the same with OpenCV < 5's (N, 1) buffers
    }[kind]
    path = insightface_file(tmp_path / "set.bin", entries, issame, protocol)
    decoded, labels = load_bin(path)
    assert labels.tolist() == issame
    assert_close(decoded, images)


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_bool_labels_and_decoded_entries(tmp_path, protocol):
    images, issame = images_and_labels()
    path = insightface_file(tmp_path / "set.bin", images, [np.bool_(label) for label in issame], protocol)
    decoded, labels = load_bin(path)
    assert labels.tolist() == issame
    assert all(np.array_equal(a, b) for a, b in zip(decoded, images, strict=True))  # taken as RGB, unchanged


def python2_bin(entries: list[bytes], issame: list[bool], as_arrays: bool) -> bytes:
    """The opcodes Python 2 + numpy 1.x emit for insightface's pickle.dump(..., protocol=2): `str` entries, or
    numpy.core.multiarray._reconstruct arrays whose dtype and data are `str` too."""

    def string(data: bytes) -> bytes:
        return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data

    def array(data: bytes) -> bytes:
        dtype = b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R"
        dtype += b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R"
        return head + b"(K\x01J" + struct.pack("<i", len(data)) + b"\x85" + dtype + b"\x89" + string(data) + b"tb"

    items = b"".join((array(e) if as_arrays else string(e)) + b"a" for e in entries)
    labels = b"".join((b"\x88" if same else b"\x89") + b"a" for same in issame)
    return b"\x80\x02]" + items + b"]" + labels + b"\x86."


@pytest.mark.parametrize("as_arrays", [False, True])
def test_reads_python2_numpy1_files(tmp_path, as_arrays):
    images, issame = images_and_labels()
    data = python2_bin([jpeg(image).tobytes() for image in images], issame, as_arrays)
    path = tmp_path / "py2.bin"
    path.write_bytes(data)
    decoded, labels = load_bin(path)
    assert labels.tolist() == issame
    assert_close(decoded, images)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = insightface_file(tmp_path / "evil.bin", [RunsCode(marker), b""], [True])
    with pytest.raises(DataError, match=r"evil\.bin: refusing to load global (posix|nt|os)\.system"):
        load_bin(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refuses_eval(tmp_path, protocol):
    class Eval:
        def __reduce__(self):
            return eval, ("1 + 1",)

    path = insightface_file(tmp_path / "eval.bin", [Eval(), b""], [True], protocol)
    with pytest.raises(DataError, match=r"eval\.bin: refusing to load global (builtins|__builtin__)\.eval"):
        read_bin(path)


def test_refuses_codecs_other_than_latin1(tmp_path):
    path = tmp_path / "codec.bin"
    path.write_bytes(b"\x80\x02]c_codecs\nencode\nX\x04\x00\x00\x00abcdX\x06\x00\x00\x00base64\x86Ra]\x88a\x86.")
    with pytest.raises(DataError, match=r"codec\.bin: not a readable pickle .*base64"):
        read_bin(path)


def test_bad_files(tmp_path):
    good = tmp_path / "good.bin"
    write_bin(good, [(gradient(0), gradient(1))], [True])
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:-40])
    text = tmp_path / "text.bin"
    text.write_text("hello, not a pickle\n")
    cases = {
        tmp_path / "missing.bin": "no such file",
        truncated: "not a readable pickle",
        text: "not a readable pickle",
        insightface_file(tmp_path / "short.bin", [b"a", b"b", b"c"], [True, False]): "3 images for 2 pairs",
    }
    # Top levels that are not (images, issame).
    for name, top in {"triple.bin": ([], [], []), "dict.bin": {"images": []}, "list.bin": [b"a", b"b"]}.items():
        (tmp_path / name).write_bytes(pickle.dumps(top))
        cases[tmp_path / name] = "expected a pickled pair|images must be a list"
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as error:
            load_bin(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("entries", "issame", "message"),
    [
        ([b"x", 3], [True], "image 1 is a int"),
        ([b"x", np.zeros(4, np.float32)], [True], "image 1 is a float32 array"),
        ([b"x", b"y"], ["yes"], "issame must be a list of bools"),
        ([b"x", b"y"], [2], "issame must be a list of bools"),
    ],
)
def test_bad_entries(tmp_path, entries, issame, message):
    path = insightface_file(tmp_path / "bad.bin", entries, issame)
    with pytest.raises(DataError, match=f"bad.bin: {message}"):
        read_bin(path)


def test_undecodable_entry_names_its_index(tmp_path):
    entries = [jpeg(gradient(0)).tobytes(), b"not a jpeg", jpeg(gradient(1)).tobytes(), b""]
    path = insightface_file(tmp_path / "broken.bin", entries, [True, False])
    assert len(read_bin(path)[0]) == 4  # still readable lazily
    with pytest.raises(DataError, match=r"broken\.bin: image 1 does not decode"):
        load_bin(path)


def test_image_size_resizes(tmp_path):
    path = tmp_path / "set.bin"
    write_bin(path, [(gradient(0, 32), gradient(1, 112))], [False])
    decoded, _ = load_bin(path, image_size=112)
    assert [image.shape for image in decoded] == [(112, 112, 3), (112, 112, 3)]
    assert_close(decoded[1:], [gradient(1, 112)])  # already the right size: untouched
    assert decode_entry(read_bin(path)[0][1], 48).shape == (48, 48, 3)


def test_grayscale_entries_become_three_channels(tmp_path):
    ok, png = cv2.imencode(".png", np.full((8, 8), 77, np.uint8))
    assert ok
    path = insightface_file(tmp_path / "gray.bin", [png.tobytes(), png.tobytes()], [True])
    decoded, _ = load_bin(path)
    assert decoded[0].shape == (8, 8, 3) and np.all(decoded[0] == 77)


def test_write_bin_rejects_bad_arguments(tmp_path):
    image = gradient(0)
    with pytest.raises(ValueError, match="1 image pairs but 2"):
        write_bin(tmp_path / "a.bin", [(image, image)], [True, False])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        write_bin(tmp_path / "a.bin", [(image, image.astype(np.float32))], [True])
    assert not list(tmp_path.iterdir())


def test_nested_issame_is_refused_before_it_is_walked(tmp_path):
    # 40 levels of a list holding itself twice: 357 bytes of pickle memo naming 2**40 leaves, which np.asarray would
    # walk in full (3 GB and growing before the check). The child's memory is capped so a regression cannot swap.
    nested: list = []
    for _ in range(40):
        nested = [nested, nested]
    path = tmp_path / "nested.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], nested), protocol=2))
    code = f"from lafs.data.pairs import read_bin; read_bin({str(path)!r})"
    result = run_with_memory_limit(code, seconds=60)
    assert result.returncode != 0
    assert "nested.bin: issame must be a list of bools, got list of list" in result.stderr.splitlines()[-1]


def test_arrays_larger_than_the_file_are_refused_before_decoding(tmp_path):
    # A 99-byte pickle calling numpy.ndarray((40000, 40000, 3), "u1"): memory the file never holds, which decoding
    # then resized for minutes. The restricted unpickler must allow numpy.ndarray (every pickled array names it).
    class Claim:
        def __reduce__(self):
            return (np.ndarray, ((40000, 40000, 3), "u1"))

    path = tmp_path / "claims.bin"
    path.write_bytes(pickle.dumps(([Claim(), Claim()], [True]), protocol=2))
    with pytest.raises(DataError, match=r"claims.bin: its image arrays claim 9,600,000,000 bytes, more than the file"):
        read_bin(path)
