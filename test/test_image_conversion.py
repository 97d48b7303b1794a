"""Image conversion: hand-built messages of every encoding decode to hand-computed pixels.

Each message is built twice, as an rclpy ``sensor_msgs.msg.Image`` and as a
rosbags dataclass pushed through CDR (the two flavours the project reads), so
the duck typing is exercised on both.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from kp_perception.errors import ImageConversionError, KpPerceptionError
from kp_perception.image_conversion import (
    SUPPORTED_ENCODINGS,
    compressed_to_rgb8,
    image_fields,
    image_to_numpy,
    image_to_rgb8,
    msg_to_rgb8,
    numpy_to_compressed,
    numpy_to_image,
    rgb8_to_compressed,
)

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
RB_IMAGE = TYPESTORE.types["sensor_msgs/msg/Image"]
RB_COMPRESSED = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
RB_HEADER = TYPESTORE.types["std_msgs/msg/Header"]
RB_TIME = TYPESTORE.types["builtin_interfaces/msg/Time"]

FLAVOURS = ["rclpy", "rosbags"]


def _rb_header():
    return RB_HEADER(stamp=RB_TIME(sec=1, nanosec=2), frame_id="cam")


def make_image(flavour: str, encoding: str, height: int, width: int, step: int, data: bytes, big: bool = False):
    """A hand-built Image message; rosbags ones go through CDR and back, like a bag read."""
    if flavour == "rclpy":
        from sensor_msgs.msg import Image

        return Image(height=height, width=width, encoding=encoding, is_bigendian=int(big), step=step, data=data)
    msg = RB_IMAGE(
        header=_rb_header(), height=height, width=width, encoding=encoding, is_bigendian=int(big),
        step=step, data=np.frombuffer(data, np.uint8).copy(),
    )
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, RB_IMAGE.__msgtype__), RB_IMAGE.__msgtype__)


def make_compressed(flavour: str, fmt: str, payload: bytes):
    if flavour == "rclpy":
        from sensor_msgs.msg import CompressedImage

        return CompressedImage(format=fmt, data=payload)
    return RB_COMPRESSED(header=_rb_header(), format=fmt, data=np.frombuffer(payload, np.uint8).copy())


def padded(rows: list[bytes], pad: int) -> tuple[bytes, int]:
    """Rows joined with ``pad`` junk bytes after each; returns (data, step)."""
    step = len(rows[0]) + pad
    return b"".join(r + b"\xee" * pad for r in rows), step


# Two-pixel-wide, two-row test pattern, as (R, G, B).
PIXELS = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (10, 20, 30)]]


def _pack_rows(order: str, alpha: bool) -> list[bytes]:
    rows = []
    for row in PIXELS:
        out = b""
        for r, g, b in row:
            vals = {"rgb": (r, g, b), "bgr": (b, g, r)}[order]
            out += bytes(vals + ((77,) if alpha else ()))
        rows.append(out)
    return rows


# --- 8-bit colour ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "encoding,order,alpha",
    [("rgb8", "rgb", False), ("bgr8", "bgr", False), ("rgba8", "rgb", True), ("bgra8", "bgr", True),
     ("8UC3", "bgr", False), ("8UC4", "bgr", True)],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_8bit_decodes_to_rgb_with_padded_step(flavour, encoding, order, alpha, pad):
    data, step = padded(_pack_rows(order, alpha), pad)
    msg = make_image(flavour, encoding, 2, 2, step, data)
    rgb = image_to_rgb8(msg)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.array(PIXELS, np.uint8))
    native = image_to_numpy(msg)
    assert native.shape == (2, 2, 4 if alpha else 3)
    # Native keeps the encoding's channel order and alpha.
    first = (255, 0, 0) if order == "rgb" else (0, 0, 255)
    assert tuple(native[0, 0, :3]) == first
    if alpha:
        assert (native[..., 3] == 77).all()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_is_replicated_into_three_channels(flavour, encoding):
    data, step = padded([bytes([0, 100, 255]), bytes([7, 8, 9])], 1)
    msg = make_image(flavour, encoding, 2, 3, step, data)
    native = image_to_numpy(msg)
    assert native.shape == (2, 3) and native.dtype == np.uint8
    np.testing.assert_array_equal(native, [[0, 100, 255], [7, 8, 9]])
    rgb = image_to_rgb8(msg)
    np.testing.assert_array_equal(rgb, np.repeat(native[:, :, None], 3, axis=2))


# --- 16-bit and float, both byte orders ----------------------------------------------------------

@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("big", [False, True])
def test_16bit_mono_honours_byte_order_and_step(flavour, encoding, big):
    values = [[0x1234, 0xFFFF, 0x0000], [0x0100, 0x00FF, 0xABCD]]
    fmt = ">3H" if big else "<3H"
    data, step = padded([struct.pack(fmt, *row) for row in values], 2)
    msg = make_image(flavour, encoding, 2, 3, step, data, big=big)
    native = image_to_numpy(msg)
    assert native.dtype == np.uint16 and native.dtype.isnative
    np.testing.assert_array_equal(native, values)
    rgb = image_to_rgb8(msg)
    # Policy: v >> 8.
    np.testing.assert_array_equal(rgb[..., 0], [[0x12, 0xFF, 0x00], [0x01, 0x00, 0xAB]])
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("big", [False, True])
def test_rgb16_and_bgr16_big_endian_swap_bytes_and_channels(flavour, big):
    fmt = ">6H" if big else "<6H"
    # One row, two pixels: (R,G,B) = (0x1000, 0x2000, 0x3000), (0xFF00, 0x0000, 0x8080).
    rgb_row = struct.pack(fmt, 0x1000, 0x2000, 0x3000, 0xFF00, 0x0000, 0x8080)
    bgr_row = struct.pack(fmt, 0x3000, 0x2000, 0x1000, 0x8080, 0x0000, 0xFF00)
    expected = [[[0x10, 0x20, 0x30], [0xFF, 0x00, 0x80]]]
    for encoding, row in (("rgb16", rgb_row), ("bgr16", bgr_row)):
        msg = make_image(flavour, encoding, 1, 2, len(row), row, big=big)
        np.testing.assert_array_equal(image_to_rgb8(msg), expected)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("encoding,code", [("32FC1", "f"), ("64FC1", "d")])
@pytest.mark.parametrize("big", [False, True])
def test_float_mono_clips_unit_range_and_honours_byte_order(flavour, encoding, code, big):
    values = [0.0, 0.5, 1.0, 2.0, -1.0, float("nan")]
    row = struct.pack((">" if big else "<") + f"6{code}", *values)
    data, step = padded([row], 4)
    msg = make_image(flavour, encoding, 1, 6, step, data, big=big)
    native = image_to_numpy(msg)
    assert native.dtype == (np.float32 if code == "f" else np.float64) and native.dtype.isnative
    np.testing.assert_array_equal(native[0, :5], values[:5])
    assert np.isnan(native[0, 5])
    # Policy: clip to [0, 1], *255, round; NaN -> 0.
    np.testing.assert_array_equal(image_to_rgb8(msg)[0, :, 0], [0, 128, 255, 255, 0, 0])


# --- Bayer -----------------------------------------------------------------------------------------

def _mosaic(pattern: str, rgb: tuple[int, int, int], height: int, width: int, dtype=np.uint8) -> np.ndarray:
    """A flat-colour Bayer mosaic: each 2x2 cell holds the pattern's letters' values."""
    value = dict(zip("rgb", rgb, strict=True))
    mosaic = np.zeros((height, width), dtype)
    for i in range(2):
        for j in range(2):
            mosaic[i::2, j::2] = value[pattern[2 * i + j]]
    return mosaic


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer8_flat_colour_demosaics_to_that_colour(flavour, pattern):
    colour = (200, 100, 30)
    mosaic = _mosaic(pattern, colour, 6, 8)
    data, step = padded([r.tobytes() for r in mosaic], 2)
    msg = make_image(flavour, f"bayer_{pattern}8", 6, 8, step, data)
    rgb = image_to_rgb8(msg)
    assert rgb.shape == (6, 8, 3)
    assert (rgb == np.array(colour, np.uint8)).all(), f"{pattern}: got {np.unique(rgb.reshape(-1, 3), axis=0)}"


@pytest.mark.parametrize("pattern", ["rggb", "gbrg"])
def test_bayer16_big_endian_demosaics_and_scales(pattern):
    colour = (0xC800, 0x6400, 0x1E00)
    mosaic = _mosaic(pattern, colour, 4, 6, np.uint16).astype(">u2")
    msg = make_image("rclpy", f"bayer_{pattern}16", 4, 6, 12, mosaic.tobytes(), big=True)
    native = image_to_numpy(msg)
    assert native.dtype == np.uint16 and (native == np.array(colour, np.uint16)).all()
    assert (image_to_rgb8(msg) == [0xC8, 0x64, 0x1E]).all()


# --- YUV 4:2:2 ------------------------------------------------------------------------------------

# BT.601 video range: Y=16 black, Y=235 white (U=V=128); Y=81,U=90,V=240 is pure red.
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("encoding,layout", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV"),
                                             ("uyvy", "UYVY"), ("yuyv", "YUYV")])
def test_yuv422_decodes_to_known_rgb(flavour, encoding, layout):
    def pair(y0, y1, u, v):
        return bytes([u, y0, v, y1]) if layout == "UYVY" else bytes([y0, u, y1, v])

    rows = [pair(16, 235, 128, 128) + pair(81, 81, 90, 240)]  # black, white, red, red
    data, step = padded(rows, 4)
    msg = make_image(flavour, encoding, 1, 4, step, data)
    rgb = image_to_rgb8(msg).astype(int)
    expected = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [255, 0, 0]]])
    assert np.abs(rgb - expected).max() <= 2, rgb


# --- Round trips through image_fields / numpy_to_image ---------------------------------------------

ROUND_TRIP = [
    ("rgb8", (5, 7, 3), np.uint8), ("bgr8", (5, 7, 3), np.uint8), ("rgba8", (5, 7, 4), np.uint8),
    ("bgra8", (5, 7, 4), np.uint8), ("mono8", (5, 7), np.uint8), ("8UC1", (5, 7), np.uint8),
    ("8UC3", (5, 7, 3), np.uint8), ("mono16", (5, 7), np.uint16), ("16UC1", (5, 7), np.uint16),
    ("rgb16", (5, 7, 3), np.uint16), ("32FC1", (5, 7), np.float32), ("64FC1", (5, 7), np.float64),
    ("16SC1", (5, 7), np.int16), ("32SC1", (5, 7), np.int32),
]


@pytest.mark.parametrize("encoding,shape,dtype", ROUND_TRIP)
def test_numpy_round_trips_through_rclpy_and_rosbags_messages(encoding, shape, dtype):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        array = rng.random(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    rclpy_msg = numpy_to_image(array, encoding)
    assert rclpy_msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(image_to_numpy(rclpy_msg), array)
    fields = image_fields(array, encoding)
    rb = RB_IMAGE(header=_rb_header(), **fields)
    rb = TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(rb, RB_IMAGE.__msgtype__), RB_IMAGE.__msgtype__)
    np.testing.assert_array_equal(image_to_numpy(rb), array)


def test_raw_layouts_round_trip_for_bayer_and_yuv():
    mosaic = _mosaic("grbg", (9, 99, 199), 4, 6)
    np.testing.assert_array_equal(image_to_rgb8(numpy_to_image(mosaic, "bayer_grbg8")), np.full((4, 6, 3), (9, 99, 199)))
    yuv = np.array([[[128, 235], [128, 235]]], np.uint8)  # UYVY: two white pixels
    assert (image_to_rgb8(numpy_to_image(yuv, "yuv422")) == 255).all()


def test_numpy_to_image_copies_header_and_accepts_big_endian_arrays():
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    array = np.array([[1, 256, 65535]], dtype=">u2")
    msg = numpy_to_image(array, "mono16", header=header)
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.sec == 12
    assert msg.is_bigendian == int(sys.byteorder == "big")
    np.testing.assert_array_equal(image_to_numpy(msg), [[1, 256, 65535]])


def test_rgb8_output_is_an_owned_writable_copy():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = numpy_to_image(frame, "rgb8")
    rgb = image_to_rgb8(msg)
    assert rgb.flags.writeable and rgb.flags.c_contiguous
    rgb[:] = 0
    np.testing.assert_array_equal(image_to_rgb8(msg), frame)


@pytest.mark.parametrize("data", [[4, 5, 6], bytes([4, 5, 6]), memoryview(bytes([4, 5, 6]))])
def test_any_message_like_object_with_list_or_bytes_data_is_accepted(data):
    msg = SimpleNamespace(height=1, width=3, encoding="mono8", is_bigendian=0, step=3, data=data)
    np.testing.assert_array_equal(image_to_numpy(msg), [[4, 5, 6]])
    rgb = image_to_rgb8(msg)
    assert rgb.flags.writeable and rgb[0, 2].tolist() == [6, 6, 6]


# --- Compressed ------------------------------------------------------------------------------------

def _blocks() -> np.ndarray:
    """32x32 RGB with four flat 16x16 blocks: JPEG keeps flat blocks close to their colour."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16, :16] = (255, 0, 0)
    img[:16, 16:] = (0, 255, 0)
    img[16:, :16] = (0, 0, 255)
    img[16:, 16:] = (200, 200, 50)
    return img


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_jpeg_round_trip_keeps_colours_and_channel_order(flavour):
    img = _blocks()
    fmt, payload = rgb8_to_compressed(img, "jpeg", quality=95)
    assert fmt == "rgb8; jpeg compressed bgr8" and payload[:2] == b"\xff\xd8"
    out = compressed_to_rgb8(make_compressed(flavour, fmt, payload))
    assert out.shape == img.shape and out.dtype == np.uint8
    # Block centres within JPEG error of the original; a channel swap would be off by ~255.
    for y, x in ((8, 8), (8, 24), (24, 8), (24, 24)):
        assert np.abs(out[y, x].astype(int) - img[y, x]).max() <= 8


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", "jpeg"])
def test_png_is_lossless_whatever_the_format_string(flavour, fmt):
    img = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    _, payload = rgb8_to_compressed(img, "png")
    np.testing.assert_array_equal(compressed_to_rgb8(make_compressed(flavour, fmt, payload)), img)


def test_mono_and_16bit_png_payloads_follow_the_rgb_policy():
    mono = np.array([[0, 50, 255]], np.uint8)
    fmt, payload = rgb8_to_compressed(mono, "png")
    assert fmt == "mono8; png compressed mono8"
    np.testing.assert_array_equal(compressed_to_rgb8(make_compressed("rclpy", fmt, payload)),
                                  np.repeat(mono[:, :, None], 3, axis=2))
    deep = np.array([[0x0000, 0x1234, 0xFFFF]], np.uint16)
    ok, png16 = cv2.imencode(".png", deep)
    assert ok
    out = compressed_to_rgb8(make_compressed("rclpy", "16UC1; png compressed", png16.tobytes()))
    np.testing.assert_array_equal(out[0, :, 0], [0x00, 0x12, 0xFF])


def test_numpy_to_compressed_builds_an_rclpy_message():
    from sensor_msgs.msg import CompressedImage

    msg = numpy_to_compressed(_blocks(), "png")
    assert isinstance(msg, CompressedImage) and msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(msg_to_rgb8(msg), _blocks())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_msg_to_rgb8_dispatches_on_fields(flavour):
    img = _blocks()
    raw = make_image(flavour, "rgb8", 32, 32, 96, img.tobytes())
    comp = make_compressed(flavour, "png", rgb8_to_compressed(img, "png")[1])
    np.testing.assert_array_equal(msg_to_rgb8(raw), img)
    np.testing.assert_array_equal(msg_to_rgb8(comp), img)


# --- Bad messages: one exception type, a message naming the problem ---------------------------------

def test_unknown_encoding_names_it_and_lists_supported_ones():
    msg = make_image("rclpy", "weird42", 1, 1, 3, b"\0\0\0")
    with pytest.raises(ImageConversionError, match=r"unknown image encoding 'weird42'; supported: ") as info:
        image_to_rgb8(msg)
    for name in ("rgb8", "mono16", "bayer_rggb8", "yuv422", "32FC1"):
        assert name in str(info.value)
    assert "32FC1" in SUPPORTED_ENCODINGS and "bayer_gbrg8" in SUPPORTED_ENCODINGS


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("delta", [-1, 5])
def test_data_length_not_matching_step_times_height_gives_both_numbers(flavour, delta):
    data = bytes(2 * 6 + delta)
    msg = make_image(flavour, "rgb8", 2, 2, 6, data)
    with pytest.raises(ImageConversionError, match=rf"len\(data\) = {12 + delta} .*step\*height = 6\*2 = 12"):
        image_to_rgb8(msg)


def test_step_smaller_than_a_row_is_rejected():
    msg = make_image("rclpy", "rgb8", 2, 4, 10, bytes(20))
    with pytest.raises(ImageConversionError, match=r"step 10 is smaller than width\*bytes_per_pixel = 4\*3 = 12"):
        image_to_numpy(msg)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_sized_image_is_rejected(height, width):
    msg = make_image("rosbags", "mono8", height, width, width, b"")
    with pytest.raises(ImageConversionError, match="zero-sized image"):
        image_to_rgb8(msg)


def test_odd_width_yuv422_is_rejected():
    msg = make_image("rclpy", "yuv422", 1, 3, 6, bytes(6))
    with pytest.raises(ImageConversionError, match="even width.*got 3"):
        image_to_rgb8(msg)


def test_tiny_bayer_image_is_rejected_rather_than_returned_black():
    msg = make_image("rclpy", "bayer_rggb8", 2, 2, 2, bytes([200, 100, 100, 30]))
    with pytest.raises(ImageConversionError, match="at least 3x3"):
        image_to_rgb8(msg)


def test_signed_encoding_has_no_rgb_view_but_decodes_natively():
    msg = numpy_to_image(np.array([[-5, 7]], np.int16), "16SC1")
    np.testing.assert_array_equal(image_to_numpy(msg), [[-5, 7]])
    with pytest.raises(ImageConversionError, match="'16SC1'.*no RGB conversion"):
        image_to_rgb8(msg)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("payload", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"not an image at all"])
def test_undecodable_compressed_data_is_rejected(flavour, payload):
    with pytest.raises(ImageConversionError, match="empty data|undecodable compressed data"):
        compressed_to_rgb8(make_compressed(flavour, "jpeg", payload))


def test_truncated_jpeg_is_reported_as_undecodable():
    _, payload = rgb8_to_compressed(_blocks(), "jpeg")
    with pytest.raises(ImageConversionError, match=r"undecodable compressed data: 20 bytes with format 'jpeg'"):
        compressed_to_rgb8(make_compressed("rclpy", "jpeg", payload[:20]))


def test_compressed_depth_is_rejected_clearly():
    with pytest.raises(ImageConversionError, match="compressedDepth.*not supported"):
        compressed_to_rgb8(make_compressed("rclpy", "16UC1; compressedDepth png", b"\0" * 40))


def test_message_of_neither_kind_is_rejected():
    with pytest.raises(ImageConversionError, match="neither a sensor_msgs/Image"):
        msg_to_rgb8(object())


@pytest.mark.parametrize(
    "array,encoding,pattern",
    [(np.zeros((2, 2, 3), np.uint8), "mono8", "does not fit encoding 'mono8'"),
     (np.zeros((2, 2), np.uint8), "mono16", "dtype uint8 does not fit encoding 'mono16'"),
     (np.zeros((2, 3, 2), np.uint8), "yuv422", "even width"),
     (np.zeros((2, 2), np.uint8), "nope", "unknown image encoding")],
)
def test_image_fields_rejects_arrays_that_do_not_fit(array, encoding, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        image_fields(array, encoding)


def test_errors_belong_to_the_project_family():
    assert issubclass(ImageConversionError, KpPerceptionError)


@pytest.mark.timeout(60)
def test_module_imports_neither_rclpy_nor_torch():
    code = (
        "import sys, kp_perception.image_conversion as m; "
        "bad = [n for n in ('rclpy', 'torch', 'sensor_msgs') if n in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
