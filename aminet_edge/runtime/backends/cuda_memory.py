"""CUDA device buffers, pinned host buffers, a stream and CUDA graphs for the TensorRT backend.

Two interchangeable implementations behind one small interface (`CudaMemory`):
- pycuda (preferred where installed, e.g. JetPack): the device's primary context, retained and pushed
  around each use, so TensorRT (CUDA runtime API, which also uses the primary context) shares it;
- cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`): the runtime API directly.
CUDA graph capture needs cuda-python (pycuda has no stream-capture API); `supports_graphs` says so.
Nothing here is imported unless the tensorrt backend is created.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from typing import Any

import numpy as np

from aminet_edge.runtime.backends import BackendUnavailableError


class CudaError(RuntimeError):
    """A CUDA API call failed; the message names the call and the CUDA error."""


class DeviceBuffer:
    """`nbytes` of device memory at integer address `ptr` (freed by `CudaMemory.free` or close)."""

    def __init__(self, ptr: int, nbytes: int, handle: Any = None) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self.handle = handle  # the owning object (pycuda DeviceAllocation), kept alive with the buffer


class CudaMemory:
    """Interface; use `CudaMemory.create(device_index)`."""

    name = ""
    supports_graphs = False
    stream: int = 0  # the stream handle as an integer (what TensorRT's execute_async_v3 takes)

    @staticmethod
    def create(device_index: int = 0, prefer: str | None = None) -> "CudaMemory":
        """pycuda if importable (or prefer="pycuda"), else cuda-python; BackendUnavailableError if neither."""
        errors = []
        order = ["pycuda", "cuda-python"] if prefer != "cuda-python" else ["cuda-python", "pycuda"]
        for name in order:
            try:
                return PyCudaMemory(device_index) if name == "pycuda" else CudaPythonMemory(device_index)
            except ImportError as exc:
                errors.append(f"{name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - pycuda.driver.Error, CudaError: no driver / no device
                raise BackendUnavailableError(f"{name} could not initialise CUDA device {device_index}: "
                                              f"{type(exc).__name__}: {exc}") from exc
        raise BackendUnavailableError("the tensorrt backend needs pycuda (pip install 'aminet-edge[jetson]') or "
                                      "cuda-python (pip install cuda-python): " + "; ".join(errors))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make the device current on the calling thread for the duration (TensorRT calls need it)."""
        yield

    def alloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array (async copies need pinned memory to overlap)."""
        raise NotImplementedError

    def htod(self, dst: DeviceBuffer | int, src: np.ndarray, nbytes: int | None = None) -> None:
        """Async copy host -> device on `stream` (src must stay alive until synchronize)."""
        raise NotImplementedError

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer | int, nbytes: int | None = None) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def begin_capture(self) -> None:
        raise BackendUnavailableError(f"CUDA graph capture needs cuda-python (pip install cuda-python); "
                                      f"{self.name} cannot capture")

    def end_capture(self) -> Any:
        """End capture; returns an instantiated, launchable graph."""
        raise NotImplementedError

    def launch(self, graph: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free every buffer, graph and the stream (idempotent)."""


def _ptr(x: DeviceBuffer | int) -> int:
    return x.ptr if isinstance(x, DeviceBuffer) else int(x)


class PyCudaMemory(CudaMemory):
    name = "pycuda"

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda  # ImportError propagates to `create`

        self.cuda = cuda
        cuda.init()
        self.context = cuda.Device(device_index).retain_primary_context()
        self._buffers: list[Any] = []
        with self.activate():
            self._stream = cuda.Stream()
        self.stream = int(self._stream.handle)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def alloc(self, nbytes: int) -> DeviceBuffer:
        allocation = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._buffers.append(allocation)
        return DeviceBuffer(int(allocation), nbytes, allocation)

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def htod(self, dst: DeviceBuffer | int, src: np.ndarray, nbytes: int | None = None) -> None:
        view = src if nbytes is None else src.reshape(-1).view(np.uint8)[:nbytes]
        self.cuda.memcpy_htod_async(_ptr(dst), view, self._stream)

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer | int, nbytes: int | None = None) -> None:
        view = dst if nbytes is None else dst.reshape(-1).view(np.uint8)[:nbytes]
        self.cuda.memcpy_dtoh_async(view, _ptr(src), self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        if self._buffers:
            with self.activate():
                for b in self._buffers:
                    b.free()
            self._buffers = []


class CudaPythonMemory(CudaMemory):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device_index: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6; ImportError propagates to `create`
        self.cudart = cudart
        self.device_index = device_index
        self._device: list[int] = []
        self._host: list[int] = []
        self._graphs: list[tuple[Any, Any]] = []
        self._check(cudart.cudaSetDevice(device_index), "cudaSetDevice")
        self._stream = self._check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                   "cudaStreamCreateWithFlags")
        self.stream = int(self._stream)

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.cudart.cudaGetErrorString(err)
            raise CudaError(f"{call} failed: {err} ({text.decode() if isinstance(text, bytes) else text})")
        return rest[0] if len(rest) == 1 else (rest or None)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._check(self.cudart.cudaSetDevice(self.device_index), "cudaSetDevice")  # per thread
        yield

    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._check(self.cudart.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._device.append(ptr)
        return DeviceBuffer(ptr, nbytes)

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check(self.cudart.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        self._host.append(ptr)
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any, call: str) -> None:
        self._check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), call)

    def htod(self, dst: DeviceBuffer | int, src: np.ndarray, nbytes: int | None = None) -> None:
        self._copy(_ptr(dst), src.ctypes.data, src.nbytes if nbytes is None else nbytes,
                   self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, "cudaMemcpyAsync(HtoD)")

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer | int, nbytes: int | None = None) -> None:
        self._copy(dst.ctypes.data, _ptr(src), dst.nbytes if nbytes is None else nbytes,
                   self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, "cudaMemcpyAsync(DtoH)")

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def begin_capture(self) -> None:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")

    def end_capture(self) -> Any:
        graph = self._check(self.cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        executable = self._check(self.cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._graphs.append((graph, executable))
        return executable

    def launch(self, graph: Any) -> None:
        self._check(self.cudart.cudaGraphLaunch(graph, self._stream), "cudaGraphLaunch")

    def close(self) -> None:
        cudart = self.cudart
        for graph, executable in self._graphs:
            cudart.cudaGraphExecDestroy(executable)
            cudart.cudaGraphDestroy(graph)
        for ptr in self._device:
            cudart.cudaFree(ptr)
        for ptr in self._host:
            cudart.cudaFreeHost(ptr)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._graphs, self._device, self._host, self._stream = [], [], [], None
