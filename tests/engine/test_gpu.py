"""The tfhe-rs evaluator on GPUs (coprocessor/fhe/tfhe_backend.py, the native ``gpu``
feature built by ``make setup-gpu``).

Two kinds of test:

* ``gpu`` tests need a CUDA device and a GPU build of the extension: the GPU evaluator
  against the CPU evaluator and the plaintext reference, Uint8 and Uint64. Elsewhere
  they are skipped, with the reason (no machine of CI has a GPU).
* The rest run everywhere: which call goes to which device, driven by ``RecordingGpus``,
  a test double standing in for the extension's copies of the key on physical GPUs (it
  records the device each call was sent to and computes on the CPU), over the
  ``FakeDeviceMemory`` of the pool's unit tests. The results are still real
  ciphertexts, decrypted and checked against the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from coprocessor import gpu
from coprocessor.errors import ConfigError
from coprocessor.fhe import reference as ref
from coprocessor.fhe.engine import OpRequest, UnsupportedOperation
from coprocessor.fhe.tfhe_backend import TfheRsBackend, TfheRsEvaluator
from coprocessor.types import FheType, Op

from ..unit.test_gpu import GIB, make_pool
from .conftest import Harness

fhe_native = pytest.importorskip("fhe_native")

U8, U64 = FheType.Uint8, FheType.Uint64


def cuda_devices() -> list[gpu.DeviceInfo]:
    """The devices a GPU build can use here: cupy asks the driver first (it never aborts
    the process), then the extension's own count must agree."""
    if not fhe_native.HAS_GPU:
        return []
    devices = gpu.discover()
    return devices if devices and fhe_native.gpu_count() == len(devices) else []


_NO_GPU = (
    "the extension is built without GPU support (make setup-gpu)"
    if not fhe_native.HAS_GPU
    else "no CUDA device visible"
)
needs_gpu = pytest.mark.skipif(not cuda_devices(), reason=_NO_GPU)


class RecordingGpus:
    """Test double standing in for the extension's copies of the key on GPUs, which
    these machines do not have: every call is recorded with the device it was sent to
    (``"absent"`` when the caller passed none: the CPU by design) and computed by the
    real CPU evaluator."""

    def __init__(self, cpu: Any) -> None:
        self._cpu = cpu
        self.calls: list[tuple[str, int | str | None]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._cpu, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs.pop("device", "absent")))
            return target(*args, **kwargs)

        return call


def native_of(harness: Harness) -> Any:
    return harness.evaluator._evaluator  # type: ignore[attr-defined]


@pytest.fixture
def on_two_gpus(tfhe_engine):
    """An evaluator over two fake 8 GiB GPUs: (evaluator, recorder, pool, memory)."""
    recorder = RecordingGpus(native_of(tfhe_engine))
    pool, memory = make_pool([8 * GIB, 8 * GIB])
    key_id = tfhe_engine.evaluator.key_digest  # type: ignore[attr-defined]
    evaluator = TfheRsEvaluator(b"", key_id, native=recorder, devices=pool)
    return evaluator, recorder, pool, memory


def run(evaluator: TfheRsEvaluator, op: Op, *operands: bytes, scalars=()) -> bytes:
    return evaluator.evaluate(OpRequest(op, tuple(operands), tuple(scalars), None, b""))


def test_ops_go_round_robin_over_the_gpus_and_release_their_memory(tfhe_engine, on_two_gpus):
    evaluator, recorder, pool, _ = on_two_gpus
    a, b = tfhe_engine.enc(200, U8), tfhe_engine.enc(77, U8)
    total = run(evaluator, Op.Add, a, b)
    enough = run(evaluator, Op.Ge, a, b)
    chosen = run(evaluator, Op.IfThenElse, enough, a, b)
    shifted = run(evaluator, Op.Shl, a, scalars=(3,))
    assert [tfhe_engine.dec(c) for c in (total, enough, chosen, shifted)] == [
        ref.binary(Op.Add, 200, 77, U8),
        1,
        200,
        ref.binary(Op.Shl, 200, 3, U8),
    ]
    assert [device for _, device in recorder.calls] == [0, 1, 0, 1]
    assert pool.reserved(0) == pool.reserved(1) == 0  # each op's memory given back


def test_an_op_goes_to_the_cpu_when_no_gpu_has_room(tfhe_engine, on_two_gpus, caplog):
    evaluator, recorder, _, memory = on_two_gpus
    memory.use_elsewhere(0, 8 * GIB - 1)  # another process fills both GPUs
    memory.use_elsewhere(1, 8 * GIB - 1)
    with caplog.at_level(logging.INFO, logger="coprocessor.gpu"):
        result = run(evaluator, Op.Sub, tfhe_engine.enc(5, U8), tfhe_engine.enc(9, U8))
    assert tfhe_engine.dec(result) == ref.binary(Op.Sub, 5, 9, U8)
    assert recorder.calls == [("binary", None)]
    assert "backing off" in caplog.text
    memory.free(1, 8 * GIB - 1)  # room again: the next op goes back to a GPU
    run(evaluator, Op.Add, tfhe_engine.enc(1, U8), tfhe_engine.enc(2, U8))
    assert recorder.calls[-1] == ("binary", 1)


def test_trivial_encryption_and_checks_stay_on_the_cpu(tfhe_engine, on_two_gpus):
    evaluator, recorder, _, _ = on_two_gpus
    trivial = evaluator.evaluate(OpRequest(Op.TrivialEncrypt, (), (42,), U8, b""))
    assert tfhe_engine.dec(trivial) == 42
    assert evaluator.check(trivial) is U8
    assert [device for _, device in recorder.calls] == ["absent", "absent"]


def test_multi_call_ops_reserve_per_call(tfhe_engine, on_two_gpus):
    """Sum and IsIn are folds of native calls: each call is placed on its own."""
    evaluator, recorder, pool, _ = on_two_gpus
    items = [tfhe_engine.enc(v, U8) for v in (3, 4, 5)]
    total = run(evaluator, Op.Sum, *items)
    assert tfhe_engine.dec(total) == 12
    assert [device for _, device in recorder.calls] == [0, 1]
    assert pool.reserved(0) == pool.reserved(1) == 0


def test_switch_and_squash_runs_on_a_gpu(tfhe_engine, on_two_gpus):
    evaluator, recorder, _, _ = on_two_gpus
    squashed = evaluator.squash(tfhe_engine.enc(99, U8))
    assert tfhe_engine.dec(squashed) == 99
    assert recorder.calls == [("squash", 0)]


def test_the_key_memory_on_each_gpu_is_measured_and_held(tfhe_engine, monkeypatch):
    """Expanding the key onto the GPUs takes what the driver reports it took on each
    out of what ops may reserve there."""
    pool, memory = make_pool([8 * GIB, 8 * GIB])
    made: list[list[int]] = []

    class OnGpus:  # test double of the GPU build's Evaluator constructor
        HAS_GPU = True

        def Evaluator(self, key: bytes, gpus: list[int]) -> Any:
            made.append(gpus)
            for index in gpus:  # the copies the real extension would make
                memory.allocate(index, (index + 1) * GIB)
            return RecordingGpus(native_of(tfhe_engine))

    monkeypatch.setattr("coprocessor.fhe.tfhe_backend._native", lambda: OnGpus())
    capacity = [pool.capacity(0), pool.capacity(1)]
    evaluator = TfheRsEvaluator(b"key bytes", b"k" * 32, devices=pool)
    assert made == [[0, 1]]
    assert evaluator.gpus == [0, 1]
    assert [pool.capacity(0), pool.capacity(1)] == [capacity[0] - GIB, capacity[1] - 2 * GIB]


def test_a_cpu_build_given_gpus_computes_on_the_cpu_and_says_so(caplog):
    if fhe_native.HAS_GPU:
        pytest.skip("this extension is a GPU build")
    pool, _ = make_pool([8 * GIB])
    with caplog.at_level(logging.WARNING, logger="coprocessor.fhe.tfhe_backend"):
        assert TfheRsEvaluator._usable(pool) is None
    assert "built without GPU support" in caplog.text
    assert TfheRsEvaluator._usable(make_pool([])[0]) is None  # no device: nothing to say


def test_a_cpu_build_refuses_gpu_work_instead_of_pretending(tfhe_engine):
    if fhe_native.HAS_GPU:
        pytest.skip("this extension is a GPU build")
    assert fhe_native.gpu_count() == 0
    with pytest.raises(ValueError, match=r"unsupported: .*no GPU support"):
        fhe_native.Evaluator(b"not even a key", [0])
    pool, _ = make_pool([8 * GIB])
    key_id = tfhe_engine.evaluator.key_digest  # type: ignore[attr-defined]
    evaluator = TfheRsEvaluator(b"", key_id, native=native_of(tfhe_engine), devices=pool)
    with pytest.raises(UnsupportedOperation, match="no GPU support"):
        run(evaluator, Op.Add, tfhe_engine.enc(1, U8), tfhe_engine.enc(2, U8))


def test_a_gpu_that_does_not_exist_is_a_configuration_error(monkeypatch):
    class Missing:
        HAS_GPU = True

        def Evaluator(self, key: bytes, gpus: list[int]) -> Any:
            raise ValueError("unsupported: GPU 0 does not exist here (0 visible)")

    monkeypatch.setattr("coprocessor.fhe.tfhe_backend._native", lambda: Missing())
    with pytest.raises(ConfigError, match="cannot use these GPUs"):
        TfheRsEvaluator(b"key", b"k" * 32, devices=make_pool([GIB])[0])


# --- on a real GPU ------------------------------------------------------------------------

GPU_BINARY = [
    Op.Add, Op.Sub, Op.Mul, Op.Div, Op.Rem, Op.BitAnd, Op.BitOr, Op.BitXor, Op.Shl, Op.Shr,
    Op.Rotl, Op.Rotr, Op.Eq, Op.Ne, Op.Ge, Op.Gt, Op.Le, Op.Lt, Op.Min, Op.Max,
]  # fmt: skip


@pytest.fixture(scope="module")
def gpu_evaluator(tfhe_engine) -> TfheRsEvaluator:
    pool = gpu.DevicePool(cuda_devices(), 0.1)
    key_id = tfhe_engine.evaluator.key_digest  # type: ignore[attr-defined]
    evaluator = TfheRsBackend().evaluator(tfhe_engine.server_key, key_id, devices=pool)
    assert evaluator.gpus, "the GPU evaluator holds no GPU copy of the key"
    return evaluator


def counting_reservations(evaluator: TfheRsEvaluator) -> Callable[[], int]:
    """How many of the evaluator's calls got a GPU since this was called."""
    pool = evaluator._devices
    assert pool is not None
    granted = []
    reserve = pool.reserve

    def spy(need: int):
        held = reserve(need)
        granted.append(held is not None)
        return held

    pool.reserve = spy  # type: ignore[method-assign]
    return lambda: sum(granted)


@needs_gpu
@pytest.mark.parametrize("fhe_type", [U8, U64])
@pytest.mark.parametrize("scalar", [False, True])
def test_gpu_binary_ops_match_the_cpu_and_the_reference(
    tfhe_engine, gpu_evaluator, fhe_type, scalar
):
    a, b = fhe_type.max_value - 3, 5
    lhs = tfhe_engine.enc(a, fhe_type)
    rhs = tfhe_engine.enc(b, fhe_type)
    on_gpu = counting_reservations(gpu_evaluator)
    wrong = []
    for op in GPU_BINARY:
        operands = (lhs,) if scalar else (lhs, rhs)
        request = OpRequest(op, operands, (b,) if scalar else (), None, b"")
        got = tfhe_engine.dec(gpu_evaluator.evaluate(request))
        cpu = tfhe_engine.dec(tfhe_engine.evaluator.evaluate(request))
        if not got == cpu == ref.binary(op, a, b, fhe_type):
            wrong.append((op.name, got, cpu, ref.binary(op, a, b, fhe_type)))
    assert not wrong, f"(op, GPU, CPU, reference): {wrong}"
    assert on_gpu() >= len(GPU_BINARY)  # every op got a GPU


@needs_gpu
@pytest.mark.parametrize("fhe_type", [U8, U64])
def test_gpu_select_cast_neg_not_rand_and_squash(tfhe_engine, gpu_evaluator, fhe_type):
    a, b = 7, fhe_type.max_value
    x, y = tfhe_engine.enc(a, fhe_type), tfhe_engine.enc(b, fhe_type)
    condition = tfhe_engine.enc(1, FheType.Bool)
    on_gpu = counting_reservations(gpu_evaluator)

    def both(request: OpRequest) -> int:
        on_device = tfhe_engine.dec(gpu_evaluator.evaluate(request))
        assert on_device == tfhe_engine.dec(tfhe_engine.evaluator.evaluate(request))
        return on_device

    assert both(OpRequest(Op.IfThenElse, (condition, x, y), (), None, b"")) == a
    assert both(OpRequest(Op.Neg, (x,), (), None, b"")) == ref.neg(a, fhe_type)
    assert both(OpRequest(Op.Not, (x,), (), None, b"")) == ref.bit_not(a, fhe_type)
    assert both(OpRequest(Op.Cast, (y,), (), FheType.Uint16, b"")) == ref.cast(b, FheType.Uint16)
    seed = bytes(range(16))
    assert both(OpRequest(Op.Rand, (), (), fhe_type, seed)) <= fhe_type.max_value
    assert tfhe_engine.dec(gpu_evaluator.squash(y)) == b
    assert on_gpu() >= 6
