"""The one conversion between sensor_msgs Image/CompressedImage and numpy.

Every consumer (bag reader, simulator, nodes, offline inference) goes through
here so that encodings, row padding and byte order are handled once and
tested once. The PyPI ``cv-bridge`` is broken on NumPy 2 and truncates
16UC1, so it is not used.

Functions duck-type their message argument: anything with the sensor_msgs
fields works, i.e. rclpy messages (``data`` is an ``array.array('B')``) and
rosbags dataclasses (``data`` is a numpy uint8 array), or bytes/lists.

Conversion policy of :func:`image_to_rgb8` (what the models take, H×W×3 uint8 RGB):

- ``rgb8`` copied; ``bgr8`` and ``8UC3`` channel-swapped (OpenCV types with 3
  or 4 channels are BGR/BGRA, as in cv_bridge); alpha is dropped.
- ``mono8``/``8UC1`` replicated into the three channels.
- 16-bit (``mono16``, ``16UC1``, ``rgb16``, ``bayer_*16``...) scaled over the
  full dtype range, ``v >> 8`` (0..65535 -> 0..255, exact inverse of the
  usual 8->16 bit ``*257`` expansion). A depth image in millimetres therefore
  looks dark; use :func:`depth_to_metres` (or :func:`image_to_numpy`) to get the metric values.
- Float (``32FC1``, ``64FC1``...) read as intensities in [0, 1]: clipped to
  [0, 1], times 255, rounded; NaN becomes 0. Fixed scaling (not per-frame
  min-max) so that consecutive frames of a sequence stay comparable.
- Bayer patterns demosaiced (bilinear, OpenCV), ``yuv422`` (UYVY) and
  ``yuv422_yuy2`` (YUYV) decoded with OpenCV's BT.601 video-range formula.
- Signed integer encodings (8S, 16S, 32S) have no meaningful RGB view and are
  rejected by image_to_rgb8 (image_to_numpy still returns them).

Only numpy and cv2 are imported at module level, so this module is usable
without rclpy (bags, training) and without torch (robot).
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kp_perception.errors import ImageConversionError

__all__ = [
    "SUPPORTED_ENCODINGS",
    "compressed_to_rgb8",
    "depth_to_metres",
    "image_fields",
    "image_to_numpy",
    "image_to_rgb8",
    "msg_to_rgb8",
    "numpy_to_compressed",
    "numpy_to_image",
    "rgb8_to_compressed",
]


@dataclass(frozen=True)
class _Layout:
    """How one encoding is laid out in ``data`` and what it decodes to."""

    dtype: np.dtype  # element type in the buffer (native order; byte order applied separately)
    channels: int  # elements per pixel in the buffer
    order: str  # "rgb", "bgr", "mono", "bayer", "yuv" or "cv" (OpenCV nCm type)
    cv_code: int = -1  # cvtColor code for bayer/yuv decoding to RGB

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


def _cv(name: str, fallback: str) -> int:
    # OpenCV >= 4.7 names Bayer codes by the sensor pattern (BayerRGGB); older ones by
    # the second row (BayerBG). Both map to the same value: rggb8 == COLOR_BayerBG2RGB.
    return int(getattr(cv2, name, getattr(cv2, fallback)))


_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)

_BAYER_CODES = {
    "rggb": _cv("COLOR_BayerRGGB2RGB", "COLOR_BayerBG2RGB"),
    "bggr": _cv("COLOR_BayerBGGR2RGB", "COLOR_BayerRG2RGB"),
    "gbrg": _cv("COLOR_BayerGBRG2RGB", "COLOR_BayerGR2RGB"),
    "grbg": _cv("COLOR_BayerGRBG2RGB", "COLOR_BayerGB2RGB"),
}


def _build_layouts() -> dict[str, _Layout]:
    layouts = {
        "rgb8": _Layout(_U8, 3, "rgb"),
        "rgba8": _Layout(_U8, 4, "rgb"),
        "bgr8": _Layout(_U8, 3, "bgr"),
        "bgra8": _Layout(_U8, 4, "bgr"),
        "rgb16": _Layout(_U16, 3, "rgb"),
        "rgba16": _Layout(_U16, 4, "rgb"),
        "bgr16": _Layout(_U16, 3, "bgr"),
        "bgra16": _Layout(_U16, 4, "bgr"),
        "mono8": _Layout(_U8, 1, "mono"),
        "mono16": _Layout(_U16, 1, "mono"),
        # ROS names UYVY "yuv422" and YUYV "yuv422_yuy2"; newer distros add "uyvy"/"yuyv".
        "yuv422": _Layout(_U8, 2, "yuv", int(cv2.COLOR_YUV2RGB_UYVY)),
        "uyvy": _Layout(_U8, 2, "yuv", int(cv2.COLOR_YUV2RGB_UYVY)),
        "yuv422_yuy2": _Layout(_U8, 2, "yuv", int(cv2.COLOR_YUV2RGB_YUYV)),
        "yuyv": _Layout(_U8, 2, "yuv", int(cv2.COLOR_YUV2RGB_YUYV)),
    }
    for pattern, code in _BAYER_CODES.items():
        layouts[f"bayer_{pattern}8"] = _Layout(_U8, 1, "bayer", code)
        layouts[f"bayer_{pattern}16"] = _Layout(_U16, 1, "bayer", code)
    cv_depths = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
                 "32S": np.int32, "32F": np.float32, "64F": np.float64}
    for depth, dtype in cv_depths.items():
        for channels in (1, 2, 3, 4):
            layouts[f"{depth}C{channels}".lower()] = _Layout(np.dtype(dtype), channels, "cv")
    return layouts


_LAYOUTS = _build_layouts()

#: Every encoding string accepted (compared case-insensitively).
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(
    name.upper() if name[0].isdigit() else name for name in _LAYOUTS
)


def _layout(encoding: Any) -> _Layout:
    key = str(encoding).strip().lower()
    layout = _LAYOUTS.get(key)
    if layout is None:
        raise ImageConversionError(
            f"unknown image encoding {str(encoding)!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return layout


def _as_bytes_array(data: Any) -> np.ndarray:
    """``data`` of any message flavour as a 1-D uint8 array, without copying buffers."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        # A plain list of ints (e.g. a hand-built message): one copy.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _cvt(pixels: np.ndarray, code: int, what: str) -> np.ndarray:
    """cv2.cvtColor with OpenCV's exceptions turned into the project's one error type."""
    try:
        return cv2.cvtColor(pixels, code)
    except cv2.error as exc:
        raise ImageConversionError(f"OpenCV could not convert {what} ({pixels.shape}, {pixels.dtype}): {exc}") from exc


def _raw_view(msg: Any) -> tuple[np.ndarray, _Layout]:
    """The message's pixels as an H×W×C view in native byte order (no decoding)."""
    layout = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-sized image: width={width} height={height}")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{layout.bytes_per_pixel} = "
            f"{row_bytes} for encoding {msg.encoding!r}"
        )
    buf = _as_bytes_array(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(
            f"len(data) = {buf.size} does not match step*height = {step}*{height} = {step * height}"
        )
    if layout.order == "yuv" and width % 2:
        raise ImageConversionError(f"{msg.encoding} needs an even width (2 pixels share U and V), got {width}")
    dtype = layout.dtype
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    # Strided view honouring the row padding; one pixel row = width*channels elements.
    view = np.ndarray(
        shape=(height, width, layout.channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, layout.bytes_per_pixel, dtype.itemsize),
    )
    if not dtype.isnative:
        view = view.astype(dtype.newbyteorder("="))  # byte swap, one copy
    return view, layout


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image into its native numpy array.

    Returns H×W for one-channel encodings (mono8/8UC1 uint8, mono16/16UC1
    uint16, 32FC1 float32, ...), H×W×C otherwise in the encoding's own channel
    order (bgr8 stays BGR). Bayer patterns are demosaiced to H×W×3 RGB (uint8
    or uint16) and yuv422/yuv422_yuy2 decoded to H×W×3 RGB uint8.

    The result is in native byte order and may be a read-only view sharing
    memory with ``msg.data``: copy it before writing into it.

    Raises:
        ImageConversionError: unknown encoding, zero size, ``step`` too small,
            ``len(data) != step*height``, odd width for yuv422, or a Bayer
            image smaller than 3×3.
    """
    view, layout = _raw_view(msg)
    if layout.order == "bayer":
        if view.shape[0] < 3 or view.shape[1] < 3:
            raise ImageConversionError(
                f"{msg.encoding} demosaicing needs at least 3x3 pixels, got {view.shape[1]}x{view.shape[0]}"
            )
        return _cvt(np.ascontiguousarray(view[:, :, 0]), layout.cv_code, msg.encoding)
    if layout.order == "yuv":
        return _cvt(np.ascontiguousarray(view), layout.cv_code, msg.encoding)
    return view[:, :, 0] if layout.channels == 1 else view


#: Depth encodings :func:`depth_to_metres` accepts, and the factor from stored value to metres (REP 118).
DEPTH_ENCODINGS: dict[str, float] = {"16uc1": 1e-3, "mono16": 1e-3, "32fc1": 1.0}


def depth_to_metres(msg: Any) -> np.ndarray:
    """Decode a depth sensor_msgs/Image to H×W float32 metres, NaN where there is no measurement.

    16UC1 (and mono16) hold millimetres, 32FC1 metres (REP 118). 0 in 16UC1 and
    0, negative, NaN or Inf in 32FC1 mean "no return" and become NaN, so a
    missing depth can never pass for a point at the camera.

    Raises:
        ImageConversionError: as :func:`image_to_numpy`, or any other encoding.
    """
    scale = DEPTH_ENCODINGS.get(str(msg.encoding).strip().lower())
    if scale is None:
        raise ImageConversionError(
            f"depth image encoding {str(msg.encoding)!r} is not a depth encoding; expected 16UC1 (mm) or 32FC1 (m)"
        )
    raw = image_to_numpy(msg)
    metres = raw.astype(np.float32) * np.float32(scale)
    metres[~(np.isfinite(metres) & (metres > 0.0))] = np.nan
    return metres


def _float_to_u8(values: np.ndarray) -> np.ndarray:
    # [0, 1] -> [0, 255], NaN -> 0 (see the module policy).
    scaled = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_u8(values: np.ndarray, encoding: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.uint16:
        return (values >> 8).astype(np.uint8)
    if values.dtype.kind == "f":
        return _float_to_u8(values)
    raise ImageConversionError(
        f"encoding {encoding!r} ({values.dtype}) has no RGB conversion; use image_to_numpy for raw values"
    )


def _channels_to_rgb(pixels: np.ndarray, bgr: bool, encoding: str) -> np.ndarray:
    """H×W or H×W×{1,3,4} uint8 -> fresh H×W×3 uint8 RGB."""
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels == 1:
        return _cvt(np.ascontiguousarray(pixels.reshape(pixels.shape[:2])), cv2.COLOR_GRAY2RGB, encoding)
    if channels == 3:
        return _cvt(pixels, cv2.COLOR_BGR2RGB, encoding) if bgr else np.array(pixels, order="C", copy=True)
    if channels == 4:
        return _cvt(pixels, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB, encoding)
    raise ImageConversionError(f"encoding {encoding!r} has {channels} channels; no RGB conversion")


def image_to_rgb8(msg: Any) -> np.ndarray:
    """Convert a sensor_msgs/Image to H×W×3 uint8 RGB, the model input.

    Follows the module policy (mono replicated, 16-bit ``>> 8``, float
    clipped from [0, 1], alpha dropped, BGR/8UC3 swapped). The result is a
    fresh, writable, C-contiguous array that shares nothing with ``msg``.

    Raises:
        ImageConversionError: as :func:`image_to_numpy`, or a signed-integer /
            two-channel encoding with no RGB meaning.
    """
    pixels = image_to_numpy(msg)
    layout = _layout(msg.encoding)
    pixels = _to_u8(pixels, str(msg.encoding))
    if layout.order in ("bayer", "yuv", "rgb"):
        bgr = False
    else:  # "bgr", "mono" and OpenCV types (3/4 channels are BGR/BGRA, as in cv_bridge)
        bgr = True
    return _channels_to_rgb(pixels, bgr, str(msg.encoding))


def compressed_to_rgb8(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg/png...) to H×W×3 uint8 RGB.

    Any ``format`` string is accepted ("jpeg", "png", "rgb8; jpeg compressed
    bgr8" from image_transport, ...): the codec is detected from the payload,
    and a decoded colour stream is always BGR in OpenCV's convention. Gray
    payloads are replicated, 16-bit PNG scaled ``>> 8``, alpha dropped.

    Raises:
        ImageConversionError: empty or undecodable data, or image_transport's
            ``compressedDepth`` format (not supported).
    """
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"CompressedImage format {fmt!r} (compressedDepth) is not supported")
    buf = _as_bytes_array(msg.data)
    if buf.size == 0:
        raise ImageConversionError(f"CompressedImage (format {fmt!r}) has empty data")
    try:
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"undecodable compressed data: {buf.size} bytes with format {fmt!r} are not a valid image"
        )
    decoded = _to_u8(decoded, fmt)
    return _channels_to_rgb(decoded, bgr=True, encoding=fmt)


def msg_to_rgb8(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> H×W×3 uint8 RGB, told apart by their fields.

    Image has ``encoding``; CompressedImage has ``format``.
    """
    if hasattr(msg, "encoding"):
        return image_to_rgb8(msg)
    if hasattr(msg, "format"):
        return compressed_to_rgb8(msg)
    raise ImageConversionError(
        f"{type(msg).__name__} is neither a sensor_msgs/Image (no 'encoding') nor a CompressedImage (no 'format')"
    )


def image_fields(array_: np.ndarray, encoding: str) -> dict[str, Any]:
    """The sensor_msgs/Image fields (except header) holding ``array_`` in ``encoding``.

    ``array_`` is in the encoding's raw layout: H×W or H×W×1 for one-channel
    encodings (including the Bayer mosaic itself), H×W×2 for yuv422 (the
    interleaved byte pairs), H×W×C otherwise, with the encoding's dtype.
    Returns ``height, width, encoding, is_bigendian, step, data`` with ``data``
    a 1-D uint8 numpy array, unpadded, in this machine's byte order, e.g.
    ``rosbags Image(header=h, **image_fields(frame, "rgb8"))``.

    Raises:
        ImageConversionError: unknown encoding, or an array whose shape or
            dtype does not fit the encoding.
    """
    layout = _layout(encoding)
    arr = np.asarray(array_)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != layout.channels:
        raise ImageConversionError(
            f"array of shape {np.asarray(array_).shape} does not fit encoding {encoding!r} "
            f"({layout.channels} channel(s) expected)"
        )
    if arr.dtype.newbyteorder("=") == layout.dtype:
        arr = arr.astype(layout.dtype, copy=False)  # e.g. a big-endian array: store it native
    else:
        raise ImageConversionError(
            f"array dtype {arr.dtype} does not fit encoding {encoding!r} ({layout.dtype} expected)"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"zero-sized image: width={width} height={height}")
    if layout.order == "yuv" and width % 2:
        raise ImageConversionError(f"{encoding} needs an even width, got {width}")
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return {
        "height": int(height),
        "width": int(width),
        "encoding": str(encoding),
        "is_bigendian": int(sys.byteorder == "big" and layout.dtype.itemsize > 1),
        "step": int(width * layout.bytes_per_pixel),
        "data": data,
    }


def _byte_array(data: np.ndarray | bytes) -> array.array:
    # rclpy accepts array.array('B') without its per-element type check: the fast path.
    out = array.array("B")
    out.frombytes(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
    return out


def numpy_to_image(array_: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Build an rclpy ``sensor_msgs.msg.Image`` from an array in ``encoding``'s raw layout.

    See :func:`image_fields` for the layout. ``header`` (a std_msgs Header)
    is copied in when given, so published images carry the camera's stamp.
    """
    from sensor_msgs.msg import Image  # lazy: rclpy is not needed for bags/training

    fields = image_fields(array_, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = fields["height"], fields["width"]
    msg.encoding = fields["encoding"]
    msg.is_bigendian = fields["is_bigendian"]
    msg.step = fields["step"]
    msg.data = _byte_array(fields["data"])
    return msg


_COMPRESSED_EXT = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}


def rgb8_to_compressed(array_: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """Encode H×W×3 uint8 RGB (or H×W mono8) as jpeg or png.

    Returns ``(format, payload)`` with image_transport's format string, e.g.
    ``"rgb8; jpeg compressed bgr8"`` or ``"mono8; png compressed mono8"``, so
    ROS tools decode it. ``quality`` is the JPEG quality (0-100); PNG is
    lossless and ignores it.
    """
    ext = _COMPRESSED_EXT.get(fmt.lower())
    if ext is None:
        raise ImageConversionError(f"unknown compression format {fmt!r}; supported: jpeg, png")
    arr = np.asarray(array_)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageConversionError(
            f"rgb8_to_compressed needs H×W×3 or H×W uint8, got shape {arr.shape} dtype {arr.dtype}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageConversionError(f"zero-sized image: shape {arr.shape}")
    if arr.ndim == 3:
        arr, source, stored = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), "rgb8", "bgr8"
    else:
        source = stored = "mono8"
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if ext == ".jpg" else []
    ok, payload = cv2.imencode(ext, arr, params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode a {arr.shape} image as {fmt}")
    name = "jpeg" if ext == ".jpg" else "png"
    return f"{source}; {name} compressed {stored}", payload.tobytes()


def numpy_to_compressed(array_: np.ndarray, fmt: str = "jpeg", header: Any = None, quality: int = 90) -> Any:
    """Build an rclpy ``sensor_msgs.msg.CompressedImage`` from H×W×3 RGB (or mono) uint8."""
    from sensor_msgs.msg import CompressedImage  # lazy, as numpy_to_image

    format_string, payload = rgb8_to_compressed(array_, fmt, quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = format_string
    msg.data = _byte_array(payload)
    return msg
