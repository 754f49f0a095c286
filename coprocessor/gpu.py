"""GPU devices and their memory, for the compute and SNS stages (cupy).

A stage pod of a batch placed on GPU nodes runs with ``FHE_COMPUTE_DEVICE=gpu`` (the
operator sets it in the Job, with the ``nvidia.com/gpu`` request). ``stage_devices``
then makes the pod's ``DevicePool``: ``CUDA_VISIBLE_DEVICES`` from the allocation the
device plugin made (``apply_allocation``), the devices CUDA reports, the memory a copy
of the tenant's key takes on each (``DevicePool.hold``). The tfhe-rs evaluator built
with that pool (``coprocessor.fhe.tfhe_backend``) reserves each op's memory before it
runs it and falls back to the CPU when no device has room.

* ``discover()`` lists the CUDA devices with their total and free memory. On a machine
  without a usable GPU (no cupy, no driver, no device) it returns ``[]`` and logs one
  line saying why work runs on CPU; it never raises for that.
* ``estimate_bytes(op, fhe_type)`` sizes one operation's device memory (pure function);
  ``estimate_squash_bytes(fhe_type)`` one switch-and-squash.
* ``DevicePool`` reserves that memory on one device in two stages (reserve in our own
  accounting, check the device's real free memory, back off if it is short), starting
  each search at the device after the last one used so work spreads round-robin.
  ``None`` means no device fits now: the caller runs the work on CPU.

Typical use in a worker::

    pool = stage_devices(load_settings())
    with pool.reservation(estimate_bytes(op, fhe_type)) as reserved:
        if reserved is None:
            run_on_cpu()
        else:
            run_on_gpu(reserved.device)

Keys (a tenant's server key is a few hundred MB) are expanded once per device and held
for the worker's life: ``pool.hold(device, key_bytes)`` takes them out of what ops may
reserve.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .settings import Settings
from .types import FheType, Op

log = logging.getLogger(__name__)

# --- devices -----------------------------------------------------------------------

# cudaError_t codes that mean "no usable GPU here" rather than "this GPU is broken".
_CUDA_NO_DRIVER = 35  # cudaErrorInsufficientDriver: no libcuda, or one older than cudart
_CUDA_NO_DEVICE = 100  # cudaErrorNoDevice: driver present, no device (or none visible)


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device as seen at discovery; ``free_bytes`` is a snapshot."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


def _cpu_only(reason: str, detail: str = "") -> list[DeviceInfo]:
    log.info(
        "no usable GPU, work runs on CPU", extra={"fields": {"reason": reason, "detail": detail}}
    )
    return []


def discover() -> list[DeviceInfo]:
    """The CUDA devices of this process (after ``CUDA_VISIBLE_DEVICES``), or ``[]``.

    Only the errors that mean "no GPU here" give ``[]``: cupy not importable, the CUDA
    driver library missing or too old, zero devices. Any other CUDA error (a device
    that is present but failing) propagates, so a broken GPU node is not silently
    turned into a slow CPU node.
    """
    try:
        import cupy
        from cupy_backends.cuda.api.runtime import CUDARuntimeError
    except ImportError as error:
        return _cpu_only("cupy is not importable", str(error))
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
        devices = []
        for index in range(count):
            free, total = cupy.cuda.Device(index).mem_info
            name = runtime.getDeviceProperties(index)["name"]
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            devices.append(DeviceInfo(index, name, total, free))
    except CUDARuntimeError as error:
        if error.status == _CUDA_NO_DRIVER:
            return _cpu_only("no CUDA driver", str(error))
        if error.status == _CUDA_NO_DEVICE:
            return _cpu_only("no CUDA device", str(error))
        raise
    except RuntimeError as error:
        # cupy's driver-API loader raises a plain RuntimeError when dlopen fails.
        if "failed to load libcuda" in str(error):
            return _cpu_only("no CUDA driver", str(error))
        raise
    if not devices:
        return _cpu_only("no CUDA device", "cudaGetDeviceCount returned 0")
    log.info(
        "GPUs found",
        extra={
            "fields": {
                "count": len(devices),
                "devices": [f"{d.index}:{d.name}" for d in devices],
                "total_bytes": [d.total_bytes for d in devices],
            }
        },
    )
    return devices


def cupy_free_bytes(index: int) -> int:
    """Free memory of device ``index`` right now, as the CUDA driver reports it."""
    import cupy

    return int(cupy.cuda.Device(index).mem_info[0])


def allocation(environ: MutableMapping[str, str]) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` a pod should use, from its device plugin allocation.

    The NVIDIA device plugin passes the devices it allocated to the container as
    ``NVIDIA_VISIBLE_DEVICES``. With the NVIDIA container runtime only those devices
    exist in the container and CUDA numbers them from 0; on a node where the runtime
    hook is missing every GPU of the node is visible, and the allocation is what keeps
    the pod on its own. Only a list of device UUIDs (``GPU-…``, ``MIG-…``, the plugin's
    default ``deviceIDStrategy``) names the same devices inside and outside the
    container: host indexes (``deviceIDStrategy=index``) would hide every GPU from a
    container that numbers its own from 0, and ``all``/``none``/``void`` or a path (the
    volume-mounts strategy) are no list. Those, and an explicit ``CUDA_VISIBLE_DEVICES``,
    change nothing (None).
    """
    if "CUDA_VISIBLE_DEVICES" in environ:
        return None
    devices = [d.strip() for d in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",")]
    devices = [d for d in devices if d]
    if not devices or not all(d.startswith(("GPU-", "MIG-")) for d in devices):
        return None
    return ",".join(devices)


def apply_allocation(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``CUDA_VISIBLE_DEVICES`` from the allocation (``allocation``), before CUDA
    initialises in this process; the value set, or None when nothing changed."""
    value = allocation(environ)
    if value is not None:
        environ["CUDA_VISIBLE_DEVICES"] = value
        log.info("GPUs of this pod", extra={"fields": {"cuda_visible_devices": value}})
    return value


def stage_devices(settings: Settings) -> DevicePool | None:
    """The GPUs a stage pod computes on, or None for the CPU.

    None unless ``settings.compute_device`` is ``gpu``. Then the allocation is applied
    and the devices discovered; a GPU node where CUDA sees no device logs why (see
    ``discover``) and computes on the CPU rather than failing the batch.
    """
    if settings.compute_device != "gpu":
        return None
    apply_allocation()
    pool = DevicePool.from_settings(settings)
    if not pool.devices:
        log.warning("FHE_COMPUTE_DEVICE=gpu but no CUDA device is usable: computing on CPU")
        return None
    return pool


# --- memory estimate ---------------------------------------------------------------

BLOCK_BITS = 2
"""Message bits per radix block (PARAM_MESSAGE_2_CARRY_2: 2 message + 2 carry bits)."""

BLOCK_BYTES = (2048 + 1) * 8
"""One block: an LWE ciphertext of dimension k*N = 2048 with 64-bit coefficients."""

CIPHERTEXT_BASE_BYTES = 64 * 1024
"""Fixed cost of any ciphertext on the device, whatever its width: the allocator's
granularity plus the lookup-table accumulator a bootstrap of its blocks needs."""

# Working ciphertexts beyond operands and result, per op family (see estimate_bytes).
_LINEAR_TEMPS = 1
_PBS_TEMPS = 4
_CHEAP = {
    Op.Add,
    Op.Sub,
    Op.Neg,
    Op.Not,
    Op.BitAnd,
    Op.BitOr,
    Op.BitXor,
    Op.Cast,
    Op.TrivialEncrypt,
    Op.Rand,
    Op.RandBounded,
}
_PER_BLOCK = {Op.Mul, Op.Div, Op.Rem, Op.MulDiv}


def blocks(fhe_type: FheType) -> int:
    """Radix blocks of a ciphertext of this type (a Bool is one block)."""
    return max(1, math.ceil(fhe_type.bits / BLOCK_BITS))


def ciphertext_bytes(fhe_type: FheType) -> int:
    """Device bytes of one ciphertext of this type."""
    return CIPHERTEXT_BASE_BYTES + blocks(fhe_type) * BLOCK_BYTES


def estimate_bytes(op: Op, fhe_type: FheType, operands: int | None = None) -> int:
    """Device memory one ``op`` on ``fhe_type`` ciphertexts needs while it runs.

    working set = (operands + result + temporaries) x ciphertext_bytes(fhe_type)

    * A ciphertext is ``CIPHERTEXT_BASE_BYTES`` plus one ``BLOCK_BYTES`` LWE per
      ``BLOCK_BITS`` message bits, so it grows linearly with the type's width.
    * ``operands`` is the arity from the op's signature; a variadic op (Sum, IsIn)
      counts ``operands`` if given, else two. Plaintext operands are counted as
      ciphertexts: an over-estimate, never an under-estimate.
    * Temporaries: linear and bitwise ops, casts and random values carry-propagate
      in place (1 ciphertext); comparisons, min/max, select, shifts and sums keep a few
      bootstrapped copies (4); Mul, MulDiv, Div and Rem keep one full-width ciphertext
      per block of the operand (the schoolbook partial products, or one trial
      remainder per step of long division), so their working set grows with the
      square of the width.

    The figures follow the scratch buffers of TFHE-rs's CUDA integer operations,
    rounded up; they are estimates, not measurements, and the pool's headroom
    (``FHE_GPU_MEMORY_HEADROOM``) absorbs the error. Key material is not counted.
    """
    arity = op.signature.arity
    inputs = arity if arity is not None else max(op.signature.min_args, operands or 2)
    if op in _PER_BLOCK:
        temporaries = max(_PBS_TEMPS, blocks(fhe_type))
    elif op in _CHEAP:
        temporaries = _LINEAR_TEMPS
    else:
        temporaries = _PBS_TEMPS
    return (inputs + 1 + temporaries) * ciphertext_bytes(fhe_type)


SQUASHED_BLOCK_BYTES = (2 * 2048 + 1) * 16
"""One block after switch-and-squash: an LWE of the noise-squashing parameters (a
larger dimension, 128-bit coefficients)."""


def estimate_squash_bytes(fhe_type: FheType) -> int:
    """Device memory one switch-and-squash of a ``fhe_type`` ciphertext needs: the
    input, its 128-bit output, and a bootstrapped copy per block while the blocks are
    squashed in parallel (the 128-bit bootstrap's accumulators). An estimate like
    ``estimate_bytes``; the noise-squashing key itself is held apart (``hold``)."""
    per_block = 2 * BLOCK_BYTES + 2 * SQUASHED_BLOCK_BYTES
    return CIPHERTEXT_BASE_BYTES * 2 + blocks(fhe_type) * per_block


# --- reservations ------------------------------------------------------------------


@dataclass(eq=False)
class Reservation:
    """``nbytes`` of device ``device`` held in a pool until ``release()``."""

    device: int
    nbytes: int
    _pool: DevicePool = field(repr=False)
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        """Give the bytes back; calling it again does nothing."""
        self._pool._release(self)


class DevicePool:
    """Memory reservations over a fixed set of devices; thread-safe.

    Per device, ``ceil(total x headroom)`` bytes are never handed out. A reservation of
    ``need`` bytes goes, trying devices round-robin from the one after the last used:

    1. *reserve* in our own accounting, under the lock:
       ``reserved + need <= total - floor``; this bounds what this process promises;
    2. *check* the device's real free memory, outside the lock (other processes and
       cupy's cache use the same GPU): ``free - need >= floor``;
    3. if the check fails, *back off*: give the stage-1 bytes back and try the next
       device. If none fits, ``reserve`` returns ``None``.

    Stage 2 runs without the lock because stage 1 already holds the bytes: two threads
    can never both be promised the same capacity, and a slow driver query does not
    block the other threads' releases.
    """

    def __init__(
        self,
        devices: Sequence[DeviceInfo],
        headroom: float,
        free_bytes: Callable[[int], int] = cupy_free_bytes,
    ) -> None:
        if not 0 <= headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), got {headroom}")
        indexes = [d.index for d in devices]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"device indexes repeat: {indexes}")
        self.devices: tuple[DeviceInfo, ...] = tuple(devices)
        self.headroom = headroom
        self._free_bytes = free_bytes
        self._floor = {d.index: math.ceil(d.total_bytes * headroom) for d in devices}
        self._capacity = {d.index: d.total_bytes - self._floor[d.index] for d in devices}
        self._reserved = dict.fromkeys(indexes, 0)
        self._next = 0  # position in self.devices where the next search starts
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DevicePool:
        """The pool of this process's real devices (empty without a GPU)."""
        return cls(discover(), settings.gpu_memory_headroom)

    def hold(self, device: int, nbytes: int) -> None:
        """Take ``nbytes`` of ``device`` out of what may be reserved, for good: memory
        the process keeps there (a copy of the server key). Raises ValueError when the
        device does not have that much capacity: the key does not fit."""
        if nbytes < 0:
            raise ValueError(f"cannot hold a negative number of bytes, got {nbytes}")
        with self._lock:
            if device not in self._capacity:
                raise ValueError(f"device {device} is not in this pool")
            if nbytes > self._capacity[device] - self._reserved[device]:
                raise ValueError(
                    f"device {device} cannot hold {nbytes} bytes: "
                    f"{self._capacity[device] - self._reserved[device]} left"
                )
            self._capacity[device] -= nbytes

    def free_bytes(self, device: int) -> int:
        """Free memory of ``device`` right now, as the driver reports it."""
        return self._free_bytes(device)

    def capacity(self, device: int) -> int:
        """Bytes of ``device`` that may ever be reserved: total minus the headroom."""
        return self._capacity[device]

    def reserved(self, device: int) -> int:
        """Bytes of ``device`` reserved now."""
        with self._lock:
            return self._reserved[device]

    def reserve(self, need: int) -> Reservation | None:
        """Reserve ``need`` bytes on one device, or ``None`` if no device fits now."""
        if need < 1:
            raise ValueError(f"a reservation needs at least one byte, got {need}")
        if not self.devices:
            return None  # no GPU: discover() already said so once
        largest = max(self._capacity.values())
        if need > largest:
            log.warning(
                "GPU reservation larger than any device, run on CPU",
                extra={"fields": {"need_bytes": need, "largest_bytes": largest}},
            )
            return None
        count = len(self.devices)
        with self._lock:
            start = self._next
        for step in range(count):
            position = (start + step) % count
            device = self.devices[position].index
            with self._lock:  # stage 1: our own accounting
                if self._reserved[device] + need > self._capacity[device]:
                    continue
                self._reserved[device] += need
            try:  # stage 2: what the device really has free
                free = self._free_bytes(device)
            except BaseException:
                self._unreserve(device, need)
                raise
            if free - need >= self._floor[device]:
                with self._lock:
                    self._next = (position + 1) % count
                return Reservation(device, need, self)
            self._unreserve(device, need)  # back off
            log.info(
                "GPU memory in use elsewhere, backing off",
                extra={
                    "fields": {
                        "device": device,
                        "need_bytes": need,
                        "free_bytes": free,
                        "floor_bytes": self._floor[device],
                    }
                },
            )
        log.debug("no GPU has room now", extra={"fields": {"need_bytes": need}})
        return None

    @contextmanager
    def reservation(self, need: int) -> Iterator[Reservation | None]:
        """``reserve(need)`` for the ``with`` block; released on exit, even on error."""
        held = self.reserve(need)
        try:
            yield held
        finally:
            if held is not None:
                held.release()

    def _unreserve(self, device: int, nbytes: int) -> None:
        with self._lock:
            self._reserved[device] -= nbytes

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation._released:
                return
            reservation._released = True
            self._reserved[reservation.device] -= reservation.nbytes
