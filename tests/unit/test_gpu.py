"""GPU devices and memory reservations (coprocessor/gpu.py).

There is no GPU where these tests run, so ``DevicePool`` is driven by a test double,
``FakeDeviceMemory``. ``discover()`` is tested for real: on a machine without a CUDA
driver it must report no device and not raise.
"""

from __future__ import annotations

import ctypes.util
import itertools
import logging
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from coprocessor.gpu import (
    BLOCK_BYTES,
    CIPHERTEXT_BASE_BYTES,
    DeviceInfo,
    DevicePool,
    Reservation,
    allocation,
    apply_allocation,
    blocks,
    ciphertext_bytes,
    discover,
    estimate_bytes,
    estimate_squash_bytes,
    stage_devices,
)
from coprocessor.settings import Settings
from coprocessor.types import FheType, Op

GIB = 1 << 30


class FakeDeviceMemory:
    """Test double standing in for physical GPUs, which these tests cannot run on.

    Each device has a total size and the bytes in use: by the code under test
    (``allocate``/``free``, what a caller does after a successful reservation) and by
    *other* processes sharing the GPU (``use_elsewhere``). ``free_bytes`` is what
    ``cupy.cuda.Device(i).mem_info[0]`` would report; every query is recorded.
    """

    def __init__(self, totals: list[int]) -> None:
        self.totals = list(totals)
        self.used = [0] * len(totals)
        self.queries: list[int] = []
        self._lock = threading.Lock()

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(i, f"Fake GPU {i}", total, total - self.used[i])
            for i, total in enumerate(self.totals)
        ]

    def free_bytes(self, index: int) -> int:
        with self._lock:
            self.queries.append(index)
            return self.totals[index] - self.used[index]

    def allocate(self, index: int, nbytes: int) -> None:
        with self._lock:
            self.used[index] += nbytes

    def free(self, index: int, nbytes: int) -> None:
        with self._lock:
            self.used[index] -= nbytes

    use_elsewhere = allocate


def make_pool(totals: list[int], headroom: float = 0.1) -> tuple[DevicePool, FakeDeviceMemory]:
    memory = FakeDeviceMemory(totals)
    return DevicePool(memory.devices(), headroom, memory.free_bytes), memory


# --- estimate_bytes -------------------------------------------------------------------


def test_ciphertext_size_is_base_plus_one_lwe_per_two_bits():
    assert blocks(FheType.Bool) == 1
    assert blocks(FheType.Uint64) == 32
    assert ciphertext_bytes(FheType.Uint64) == CIPHERTEXT_BASE_BYTES + 32 * BLOCK_BYTES


@pytest.mark.parametrize("op", list(Op))
def test_estimate_grows_with_type_width(op):
    sizes = [estimate_bytes(op, t) for t in sorted(FheType, key=lambda t: t.bits)]
    assert all(a < b for a, b in itertools.pairwise(sizes)), sizes


@pytest.mark.parametrize("fhe_type", [t for t in FheType if t.bits >= 8])
@pytest.mark.parametrize("heavy", [Op.Mul, Op.Div, Op.Rem, Op.MulDiv])
def test_mul_and_div_need_more_than_add(heavy, fhe_type):
    assert estimate_bytes(heavy, fhe_type) > estimate_bytes(Op.Add, fhe_type)


def test_mul_temporaries_grow_with_width():
    """Per ciphertext, Mul's working set grows with the width; Add's stays the same."""

    def per_ciphertext(op, t):
        return estimate_bytes(op, t) / ciphertext_bytes(t)

    assert per_ciphertext(Op.Mul, FheType.Uint256) > per_ciphertext(Op.Mul, FheType.Uint64)
    assert per_ciphertext(Op.Add, FheType.Uint256) == per_ciphertext(Op.Add, FheType.Uint64)


def test_variadic_ops_count_their_operands():
    assert estimate_bytes(Op.Sum, FheType.Uint64, operands=10) > estimate_bytes(
        Op.Sum, FheType.Uint64, operands=2
    )
    assert estimate_bytes(Op.Sum, FheType.Uint64) == estimate_bytes(
        Op.Sum, FheType.Uint64, operands=2
    )


@given(st.sampled_from(list(Op)), st.sampled_from(list(FheType)), st.sampled_from(list(FheType)))
def test_estimate_is_monotonic_in_width(op, a, b):
    if a.bits < b.bits:
        assert estimate_bytes(op, a) < estimate_bytes(op, b)


# --- discover (real: this machine has no GPU) ------------------------------------------


def _has_cuda_driver() -> bool:
    """Independent of cupy: can the CUDA driver library be loaded at all?"""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


@pytest.mark.skipif(_has_cuda_driver(), reason="this machine has a CUDA driver")
def test_discover_without_driver_reports_none_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="coprocessor.gpu"):
        assert discover() == []
    lines = [r for r in caplog.records if r.name == "coprocessor.gpu"]
    assert len(lines) == 1
    assert lines[0].getMessage() == "no usable GPU, work runs on CPU"
    assert lines[0].fields["reason"] == "no CUDA driver"


@pytest.mark.skipif(not _has_cuda_driver(), reason="no CUDA driver on this machine")
def test_discover_with_driver_describes_each_device():
    for device in discover():
        assert device.name
        assert 0 < device.free_bytes <= device.total_bytes


@pytest.mark.skipif(_has_cuda_driver(), reason="this machine has a CUDA driver")
def test_pool_from_settings_without_gpu_sends_everything_to_cpu():
    pool = DevicePool.from_settings(Settings(gpu_memory_headroom=0.2))
    assert pool.devices == ()
    assert pool.headroom == 0.2
    assert pool.reserve(estimate_bytes(Op.Add, FheType.Bool)) is None
    with pool.reservation(1) as held:
        assert held is None


def test_discover_without_cupy_reports_none(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with caplog.at_level(logging.INFO, logger="coprocessor.gpu"):
        assert discover() == []
    assert [r.fields["reason"] for r in caplog.records] == ["cupy is not importable"]


class StubRuntime:
    """Test double for ``cupy.cuda.runtime`` whose device count raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def getDeviceCount(self) -> int:
        raise self.error


def test_discover_treats_a_missing_libcuda_as_no_gpu(monkeypatch):
    import cupy

    # The exact error cupy's driver-API loader raised on this machine.
    error = RuntimeError(
        "CuPy failed to load libcuda.so.1: OSError: libcuda.so.1: "
        "cannot open shared object file: No such file or directory"
    )
    monkeypatch.setattr(cupy.cuda, "runtime", StubRuntime(error))
    assert discover() == []


def _cuda_runtime_error(status: int) -> BaseException:
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    return CUDARuntimeError(status)


@pytest.mark.parametrize(
    "make_error",
    [
        pytest.param(lambda: RuntimeError("something else went wrong"), id="RuntimeError"),
        # cudaErrorIllegalAddress: a GPU is there but failing; that is not "no GPU".
        pytest.param(lambda: _cuda_runtime_error(700), id="CUDARuntimeError(700)"),
    ],
)
def test_discover_does_not_hide_a_broken_gpu(monkeypatch, make_error):
    import cupy

    error = make_error()
    monkeypatch.setattr(cupy.cuda, "runtime", StubRuntime(error))
    with pytest.raises(type(error)) as raised:
        discover()
    assert raised.value is error


# --- DevicePool -------------------------------------------------------------------------


def test_round_robin_spreads_consecutive_reservations():
    pool, _ = make_pool([GIB, GIB, GIB])
    held = [pool.reserve(1000) for _ in range(7)]
    assert [r.device for r in held] == [0, 1, 2, 0, 1, 2, 0]
    assert [pool.reserved(i) for i in range(3)] == [3000, 2000, 2000]


def test_stage_one_refuses_to_promise_more_than_capacity():
    pool, memory = make_pool([1000], headroom=0.1)
    assert pool.capacity(0) == 900
    first = pool.reserve(600)
    assert first is not None
    memory.queries.clear()
    # The device still reports 1000 free (nothing allocated yet), but 600 is promised.
    assert pool.reserve(400) is None
    assert memory.queries == []  # refused by the accounting, never asked the device
    assert pool.reserved(0) == 600
    assert pool.reserve(300) is not None
    assert pool.reserved(0) == 900


def test_stage_two_backs_off_when_another_process_uses_the_memory(caplog):
    pool, memory = make_pool([1000, 1000], headroom=0.1)
    memory.use_elsewhere(0, 500)  # free 500; 500 - 450 < floor 100
    before = pool.reserved(0)
    with caplog.at_level(logging.INFO, logger="coprocessor.gpu"):
        held = pool.reserve(450)
    assert held is not None and held.device == 1
    assert memory.queries == [0, 1]  # device 0 was checked first, then left
    assert pool.reserved(0) == before  # its stage-1 bytes were given back
    assert pool.reserved(1) == 450
    backoff = [r for r in caplog.records if "backing off" in r.getMessage()]
    assert [(r.fields["device"], r.fields["free_bytes"]) for r in backoff] == [(0, 500)]


def test_no_device_fits_returns_none_and_holds_nothing():
    pool, memory = make_pool([1000, 1000], headroom=0.1)
    memory.use_elsewhere(0, 800)
    memory.use_elsewhere(1, 800)
    assert pool.reserve(200) is None
    assert memory.queries == [0, 1]
    assert [pool.reserved(0), pool.reserved(1)] == [0, 0]


@pytest.mark.parametrize(("need", "fits"), [(500, True), (501, False)])
def test_stage_two_keeps_the_headroom_free(need, fits):
    pool, memory = make_pool([1000], headroom=0.1)
    memory.use_elsewhere(0, 400)  # free 600; floor 100, so 500 is the most that fits
    assert (pool.reserve(need) is not None) is fits
    assert pool.reserved(0) == (need if fits else 0)


def test_impossible_size_returns_none_at_once(caplog):
    pool, memory = make_pool([1000, 2000], headroom=0.1)
    with caplog.at_level(logging.WARNING, logger="coprocessor.gpu"):
        assert pool.reserve(1801) is None
    assert memory.queries == []
    [line] = caplog.records
    assert line.fields == {"need_bytes": 1801, "largest_bytes": 1800}
    assert pool.reserve(1800) is not None  # the largest device's capacity still fits


def test_release_on_exception_inside_the_block():
    pool, _ = make_pool([1000])
    with pytest.raises(ZeroDivisionError), pool.reservation(500) as held:
        assert pool.reserved(0) == 500
        assert held is not None
        1 / 0  # noqa: B018
    assert pool.reserved(0) == 0


def test_release_is_idempotent():
    pool, _ = make_pool([1000])
    held = pool.reserve(300)
    other = pool.reserve(200)
    held.release()
    held.release()
    assert pool.reserved(0) == 200
    other.release()
    assert pool.reserved(0) == 0


def test_stage_two_error_backs_off_and_propagates():
    memory = FakeDeviceMemory([1000])

    def failing(index: int) -> int:
        raise OSError("driver went away")

    pool = DevicePool(memory.devices(), 0.1, failing)
    with pytest.raises(OSError):
        pool.reserve(100)
    assert pool.reserved(0) == 0


@pytest.mark.parametrize("need", [0, -5])
def test_a_reservation_needs_a_positive_size(need):
    pool, _ = make_pool([1000])
    with pytest.raises(ValueError):
        pool.reserve(need)


@pytest.mark.parametrize("headroom", [-0.1, 1.0])
def test_headroom_must_leave_something(headroom):
    with pytest.raises(ValueError):
        DevicePool([], headroom)


def test_concurrent_reservations_never_exceed_capacity():
    """Threads reserve, allocate on the fake device, check, free and release at once.

    A soak test: under CPython's GIL the pool's critical sections rarely interleave,
    so the deterministic test below is the one that pins down the two stages."""
    threads_n, rounds, need = 8, 300, 300
    pool, memory = make_pool([1000, 1000], headroom=0.1)  # 3 reservations per device
    barrier = threading.Barrier(threads_n)
    peak = [0, 0]
    granted = [0]
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(rounds):
            held = pool.reserve(need)
            if held is None:
                continue
            memory.allocate(held.device, need)
            with lock:
                granted[0] += 1
                used = memory.used[held.device]
                peak[held.device] = max(peak[held.device], used)
                if used > pool.capacity(held.device):
                    failures.append(f"device {held.device} holds {used}")
            memory.free(held.device, need)
            held.release()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, to interleave the two stages
    try:
        workers = [threading.Thread(target=worker) for _ in range(threads_n)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert failures == []
    assert max(peak) <= 900
    assert granted[0] > 0
    assert [pool.reserved(0), pool.reserved(1)] == [0, 0]


class GatedDeviceMemory(FakeDeviceMemory):
    """``FakeDeviceMemory`` whose first ``gated`` queries wait until ``open()``.

    It parks threads inside stage 2 (the device check) so a test can look at the pool
    while they are there, without sleeping.
    """

    def __init__(self, totals: list[int], gated: int) -> None:
        super().__init__(totals)
        self.gated = gated
        self.parked = 0
        self._gate = threading.Condition()
        self._open = False

    def free_bytes(self, index: int) -> int:
        with self._gate:
            if self.gated > 0:
                self.gated -= 1
                self.parked += 1
                self._gate.notify_all()
                assert self._gate.wait_for(lambda: self._open, timeout=30)
        return super().free_bytes(index)

    def wait_parked(self, count: int) -> bool:
        with self._gate:
            return self._gate.wait_for(lambda: self.parked >= count, timeout=30)

    def open(self) -> None:
        with self._gate:
            self._open = True
            self._gate.notify_all()


def test_bytes_being_checked_are_already_promised():
    """While three threads are in stage 2, their stage-1 bytes bound everyone else."""
    memory = GatedDeviceMemory([1000], gated=3)
    pool = DevicePool(memory.devices(), 0.1, memory.free_bytes)  # capacity 900 = 3 x 300
    results: list[Reservation | None] = []
    workers = [threading.Thread(target=lambda: results.append(pool.reserve(300))) for _ in range(3)]
    for thread in workers:
        thread.start()
    try:
        assert memory.wait_parked(3)
        assert pool.reserved(0) == 900
        assert pool.reserve(300) is None  # refused by stage 1: all 900 are promised
        assert len(memory.queries) == 0  # and the device was never asked
    finally:
        memory.open()
        for thread in workers:
            thread.join()
    assert [r is not None for r in results] == [True, True, True]
    assert pool.reserved(0) == 900


class ReservationMachine(RuleBasedStateMachine):
    """Random reserve / release / other-process traffic; the accounting always adds up."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.pool, self.memory = make_pool([1000, 1500, 700], headroom=0.1)
        self.open: set[Reservation] = set()

    @rule(target=held, need=st.integers(1, 1400))
    def reserve(self, need):
        reservation = self.pool.reserve(need)
        if reservation is None:
            return None
        self.memory.allocate(reservation.device, need)
        # Stage 2 held at the moment of the grant: the device keeps its headroom free.
        device = reservation.device
        floor = self.memory.totals[device] - self.pool.capacity(device)
        assert self.memory.free_bytes(device) >= floor
        self.open.add(reservation)
        return reservation

    @rule(reservation=consumes(held))
    def release(self, reservation):
        if reservation is None:
            return
        reservation.release()
        self.memory.free(reservation.device, reservation.nbytes)
        self.open.discard(reservation)

    @rule(device=st.integers(0, 2), nbytes=st.integers(0, 500))
    def other_process(self, device, nbytes):
        self.memory.use_elsewhere(device, nbytes)

    @rule(device=st.integers(0, 2))
    def other_process_exits(self, device):
        self.memory.used[device] = sum(r.nbytes for r in self.open if r.device == device)

    @invariant()
    def accounting_matches_what_is_held(self):
        for device in range(3):
            mine = sum(r.nbytes for r in self.open if r.device == device)
            assert self.pool.reserved(device) == mine
            assert mine <= self.pool.capacity(device)


ReservationMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_reservation_machine = ReservationMachine.TestCase


# --- squash estimate, held key memory ---------------------------------------------------


def test_squash_estimate_grows_with_width_and_exceeds_an_add():
    sizes = [estimate_squash_bytes(t) for t in sorted(FheType, key=lambda t: t.bits)]
    assert all(a < b for a, b in itertools.pairwise(sizes)), sizes
    # 128-bit output blocks: more than the 64-bit ciphertexts of an Add on the same type.
    assert estimate_squash_bytes(FheType.Uint64) > estimate_bytes(Op.Add, FheType.Uint64)


def test_held_key_memory_is_never_reserved_again():
    pool, _ = make_pool([10 * GIB], headroom=0.1)
    capacity = pool.capacity(0)
    pool.hold(0, 4 * GIB)
    assert pool.capacity(0) == capacity - 4 * GIB
    assert pool.reserve(capacity - 4 * GIB + 1) is None  # larger than what is left
    held = pool.reserve(capacity - 4 * GIB)
    assert held is not None and held.device == 0


def test_holding_more_than_a_device_has_is_refused_and_changes_nothing():
    pool, _ = make_pool([GIB, GIB], headroom=0.0)
    with pytest.raises(ValueError, match="cannot hold"):
        pool.hold(1, GIB + 1)
    with pytest.raises(ValueError, match="not in this pool"):
        pool.hold(7, 1)
    with pytest.raises(ValueError, match="negative"):
        pool.hold(0, -1)
    assert pool.capacity(1) == GIB
    reserved = pool.reserve(GIB // 2)
    assert reserved is not None
    with pytest.raises(ValueError, match="cannot hold"):  # reserved bytes are not free
        pool.hold(reserved.device, GIB // 2 + 1)


# --- the pod's allocation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"NVIDIA_VISIBLE_DEVICES": " GPU-1a2b , GPU-3c4d "}, "GPU-1a2b,GPU-3c4d"),
        ({"NVIDIA_VISIBLE_DEVICES": "MIG-5e6f"}, "MIG-5e6f"),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-1a2b", "CUDA_VISIBLE_DEVICES": "0"}, None),  # set
        # Host indexes: inside the container the GPUs may be numbered from 0 again.
        ({"NVIDIA_VISIBLE_DEVICES": "2,3"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-1a2b,3"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": " , "}, None),
        ({}, None),
    ],
)
def test_cuda_visible_devices_come_from_the_device_plugin_allocation(environ, expected):
    assert allocation(environ) == expected
    before = dict(environ)
    assert apply_allocation(environ) == expected
    if expected is None:
        assert environ == before
    else:
        assert environ["CUDA_VISIBLE_DEVICES"] == expected


def test_a_cpu_stage_looks_for_no_gpu(monkeypatch):
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so the test leaves it as found
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert stage_devices(Settings(compute_device="cpu")) is None
    import os

    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # not even the allocation is applied


@pytest.mark.skipif(_has_cuda_driver(), reason="this machine has a CUDA driver")
def test_a_gpu_stage_without_a_usable_gpu_computes_on_cpu(monkeypatch, caplog):
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-0a")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so the test leaves it as found
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with caplog.at_level(logging.INFO, logger="coprocessor.gpu"):
        assert stage_devices(Settings(compute_device="gpu")) is None
    assert "no CUDA device is usable: computing on CPU" in caplog.text
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-0a"  # applied before CUDA was asked


def test_compute_device_setting_is_checked():
    with pytest.raises(ValueError, match="compute_device"):
        Settings(compute_device="tpu")
