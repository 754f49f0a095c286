"""The concrete backend is an optional extra (the image leaves it out): without
concrete-python, asking for it is one clear line, never a traceback mid-batch."""

import importlib.util
import sys

import pytest

from coprocessor.errors import UserError
from coprocessor.fhe import engine


def test_the_concrete_backend_without_concrete_python_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "concrete" else real(name, *rest),
    )
    monkeypatch.delitem(sys.modules, "coprocessor.fhe.concrete_backend", raising=False)
    monkeypatch.setattr(engine, "_INSTANCES", {})
    with pytest.raises(UserError, match=r"fhe-coprocessor\[concrete\]"):
        engine.get_backend("concrete")
