"""A panic inside TFHE-rs is an error of the call, not the end of the process.

pyo3 turns a Rust panic into ``PanicException``, which derives from BaseException: a
worker's ``except Exception`` lets it through and the process dies. Every native call
of the tfhe-rs backend goes through ``_Contained``, which turns it into NativePanic
(Irrecoverable), so the item in hand fails and the rest go on. The panics here are
real ones, raised in Rust by the test build's ``panic_for_tests``.
"""

from __future__ import annotations

import pytest

from coprocessor.errors import Irrecoverable
from coprocessor.fhe.tfhe_backend import NativePanic, _native
from coprocessor.types import FheType


def test_the_raw_extension_panic_is_not_an_exception():
    """Why containment is needed: the bare extension's panic escapes `except Exception`."""
    import fhe_native

    assert fhe_native.HAS_TEST_PROVER, "the test suite needs the test-prover build"
    with pytest.raises(BaseException) as raised:
        fhe_native.panic_for_tests("raw")
    assert not isinstance(raised.value, Exception)
    assert type(raised.value).__name__ == "PanicException"


def test_a_panic_through_the_backend_is_an_irrecoverable_error_naming_the_call():
    try:
        _native().panic_for_tests("assertion failed: lwe_dimension matches")
    except Exception as error:  # what every worker catches
        assert isinstance(error, NativePanic)
        assert isinstance(error, Irrecoverable)
        assert "TFHE-rs panicked in fhe_native.panic_for_tests" in str(error)
        assert "lwe_dimension matches" in str(error)
    else:
        pytest.fail("the panic did not surface")
    # The process goes on: the extension still works after the panic.
    assert _native().TFHE_VERSION == "1.7.0"


def test_objects_made_by_the_extension_are_contained_too(tfhe_engine):
    """Evaluator and Client instances come back wrapped, so their methods are covered as
    well as the module's functions; errors that are not panics pass unchanged."""
    native = tfhe_engine.evaluator._evaluator
    assert type(native).__name__ == "_Contained"
    assert type(tfhe_engine.client._client).__name__ == "_Contained"
    with pytest.raises(ValueError):  # a refused ciphertext stays a ValueError
        native.check(int(FheType.Uint8), b"not a ciphertext")
    assert tfhe_engine.evaluator.check(tfhe_engine.enc(7, FheType.Uint8)) is FheType.Uint8
