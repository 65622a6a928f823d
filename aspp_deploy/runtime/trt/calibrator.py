"""INT8 calibration for TensorRT's legacy implicit path (8.x to 10.x; TensorRT 11 removed it).

Calibration data has one shape everywhere in aspp-deploy: an iterable of ``{input_name: array}``
batches (float32, or the uint8 pixels a fused-I/O model takes: the network's input type, which the
device buffers are made of). ``CalibrationBatches`` checks them as they are consumed, ``CalibrationCache`` reuses a cache
only when its sidecar key (model + data + settings) matches, and ``make_calibrator`` wraps both in
a TensorRT calibrator subclass. Everything but that subclass is plain Python, testable without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from aspp_deploy.errors import InputError
from aspp_deploy.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from tensorrt import IInt8Calibrator

    from aspp_deploy.runtime.trt.cuda import CudaApi, DeviceBuffer

ALGORITHMS = ("entropy", "minmax")
Batch = Mapping[str, np.ndarray]
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))  # float inputs, or a fused-I/O model's pixels


def check_batch(batch: Any, index: int, expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """Names -> shapes of one batch; InputError unless float32 (or uint8 pixels), C-contiguous and shaped
    like ``expected``."""
    where = f"calibration batch {index}"
    if not isinstance(batch, Mapping) or not batch:
        raise InputError(f"{where} must be a non-empty dict of input name -> array")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, array in batch.items():
        if not isinstance(array, np.ndarray):
            raise InputError(f"{where} input {name!r} is a {type(array).__name__}, not a NumPy array")
        if array.dtype not in INPUT_DTYPES:
            raise InputError(f"{where} input {name!r} is {array.dtype}; calibration data must be float32 "
                             "(uint8 pixels for a fused-I/O model)")
        if not array.flags["C_CONTIGUOUS"]:
            raise InputError(f"{where} input {name!r} is not C-contiguous (use np.ascontiguousarray)")
        if array.ndim == 0:
            raise InputError(f"{where} input {name!r} is a scalar; it needs a batch dimension")
        shapes[str(name)] = tuple(int(s) for s in array.shape)
    if len({s[0] for s in shapes.values()}) > 1:
        raise InputError(f"{where} inputs have different batch sizes: {shapes}")
    if expected is not None and shapes != expected:
        if set(shapes) != set(expected):
            raise InputError(f"{where} has inputs {sorted(shapes)}, batch 0 had {sorted(expected)}")
        name = next(n for n in shapes if shapes[n] != expected[n])
        raise InputError(f"{where} input {name!r} has shape {shapes[name]}, batch 0 had {expected[name]}: every "
                         "batch must have the same shape (drop or pad a short last batch)")
    return shapes


class CalibrationBatches:
    """Consumes an iterable of batches once, checking each against the first."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._iter = iter(batches)
        first = next(self._iter, None)
        if first is None:
            raise InputError("calibration data is empty: give at least one batch")
        self.spec = check_batch(first, 0)
        self.dtypes = {str(name): np.dtype(array.dtype) for name, array in first.items()}
        self._first: Batch | None = first
        self.count = 0

    @property
    def batch_size(self) -> int:
        return next(iter(self.spec.values()))[0]

    def next(self) -> Batch | None:
        """The next checked batch, or None when the data is exhausted."""
        if self._first is not None:
            batch, self._first = self._first, None
        else:
            batch = next(self._iter, None)
            if batch is None:
                return None
            check_batch(batch, self.count, self.spec)
            changed = [n for n, a in batch.items() if np.dtype(a.dtype) != self.dtypes.get(str(n))]
            if changed:
                raise InputError(f"calibration batch {self.count} input {changed[0]!r} is {batch[changed[0]].dtype}, "
                                 f"batch 0 was {self.dtypes.get(str(changed[0]))}")
        self.count += 1
        return batch


def calibration_cache_key(model_sha256: str, data_key: str, settings: Mapping[str, Any]) -> str:
    """sha256 over the model hash, a key for the calibration data and the calibration settings."""
    payload = json.dumps({"model": model_sha256, "data": data_key, "settings": dict(settings)},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def data_key_from_batches(batches: Iterable[Batch]) -> str:
    """A key for in-memory calibration data: names, shapes, dtypes and bytes of every batch, in order."""
    h = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            h.update(array.tobytes())
    return h.hexdigest()


class CalibrationCache:
    """``path`` holds TensorRT's cache bytes; ``path + ".json"`` says which model/data/settings made them."""

    def __init__(self, path: Path | str, key: str, trt_version: str = "") -> None:
        self.path = Path(path)
        self.sidecar = Path(str(path) + ".json")
        self.key = key
        self.trt_version = trt_version
        self.reason = ""  # why the last read() found nothing reusable

    def read(self) -> bytes | None:
        """The cache bytes when the sidecar key matches, else None (``reason`` says why)."""
        if not self.path.is_file() or not self.sidecar.is_file():
            self.reason = f"no calibration cache at {self.path}"
            return None
        try:
            meta = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            self.reason = f"unreadable sidecar {self.sidecar}"
            return None
        if not isinstance(meta, dict) or meta.get("key") != self.key:
            self.reason = "the cache was made from another model, calibration data or settings"
            return None
        data = self.path.read_bytes()
        if meta.get("cache_sha256") != hashlib.sha256(data).hexdigest():
            self.reason = "the cache file does not match its sidecar (partly written or edited)"
            return None
        self.reason = ""
        return data

    def write(self, data: bytes) -> None:
        atomic_write_bytes(self.path, data)
        meta = {"key": self.key, "trt_version": self.trt_version, "cache_sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(self.sidecar, json.dumps(meta, indent=2) + "\n")


class CalibrationFeeder:
    """What the TensorRT calibrator delegates to: batches onto device buffers it keeps alive, the cache.

    TensorRT does not surface exceptions raised inside its callbacks, so they are kept in ``error``
    and the build step re-raises them.
    """

    def __init__(self, batches: CalibrationBatches | None, cache: CalibrationCache, cuda: CudaApi) -> None:
        self.batches, self.cache, self.cuda = batches, cache, cuda
        self.error: Exception | None = None
        self.stream = cuda.stream_create()
        spec = batches.spec if batches is not None else {}
        dtypes = batches.dtypes if batches is not None else {}
        self.buffers: dict[str, DeviceBuffer] = {
            name: cuda.malloc(int(np.prod(shape)) * dtypes[name].itemsize) for name, shape in spec.items()}

    def batch_size(self) -> int:
        return self.batches.batch_size if self.batches is not None else 1

    def next_pointers(self, names: list[str]) -> list[int] | None:
        if self.batches is None or self.error is not None:
            return None
        try:
            missing = [n for n in names if n not in self.buffers]
            if missing:
                raise InputError(f"the network wants inputs {missing}; calibration batches have {sorted(self.buffers)}")
            batch = self.batches.next()
            if batch is None:
                return None
            for name in names:
                self.cuda.memcpy_htod_async(self.buffers[name].ptr, batch[name], self.stream)
            self.cuda.stream_sync(self.stream)
            return [self.buffers[name].ptr for name in names]
        except Exception as exc:  # noqa: BLE001 - re-raised by the build step
            self.error = exc
            return None

    def write_cache(self, data: Any) -> None:
        try:
            self.cache.write(bytes(data))
        except Exception as exc:  # noqa: BLE001 - re-raised by the build step
            self.error = exc

    def close(self) -> None:
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()


def make_calibrator(trt: Any, batches: Iterable[Batch] | None, cache_path: Path | str,
                    algorithm: str = "entropy", *, model_sha256: str, data_key: str,
                    settings: Mapping[str, Any] | None = None, cuda: CudaApi | None = None) -> IInt8Calibrator:
    """A ``trt.IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator``) subclass instance.

    ``batches`` may be None when ``cache_path`` holds a cache whose key matches (a cache made on a
    workstation, reused on a Jetson). The returned object's ``feeder`` is its ``CalibrationFeeder``.
    """
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown calibration algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    key = calibration_cache_key(model_sha256, data_key, {"algorithm": algorithm, **(settings or {})})
    cache = CalibrationCache(cache_path, key, str(trt.__version__))
    data = CalibrationBatches(batches) if batches is not None else None
    if data is None and cache.read() is None:
        raise InputError(f"no calibration data and no reusable cache ({cache.reason}): give calibration images")
    if cuda is None:
        from aspp_deploy.runtime.trt.cuda import get_cuda

        cuda = get_cuda()
    feeder = CalibrationFeeder(data, cache, cuda)
    base: type[IInt8Calibrator] = trt.IInt8MinMaxCalibrator if algorithm == "minmax" else trt.IInt8EntropyCalibrator2

    class Calibrator(base):
        def __init__(self) -> None:
            super().__init__()  # TensorRT requires the base initialiser to run
            self.feeder = feeder

        def get_batch_size(self) -> int:
            return self.feeder.batch_size()

        def get_batch(self, names: list[str]) -> list[int] | None:
            return self.feeder.next_pointers(names)

        def read_calibration_cache(self) -> bytes | None:
            return self.feeder.cache.read()

        def write_calibration_cache(self, cache: Any) -> None:
            self.feeder.write_cache(cache)

    return Calibrator()


def feeder_of(calibrator: object) -> CalibrationFeeder:
    """The ``CalibrationFeeder`` behind a calibrator from ``make_calibrator``."""
    feeder = getattr(calibrator, "feeder", None)
    if not isinstance(feeder, CalibrationFeeder):
        raise TypeError("not a calibrator made by make_calibrator")
    return feeder
