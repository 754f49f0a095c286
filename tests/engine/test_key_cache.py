"""Expanded TFHE-rs keys in the node-local key cache: a key read back from its file
computes exactly what the key it was saved from computes, and a file that is not what
was written (a flipped byte, a cut, another key's bytes) never becomes a key.

Uses the compute share of the session keyset (about 170 MB expanded); the whole key
(2 GB expanded) goes through the same two functions, measured in bench/key_cache.py.
"""

from __future__ import annotations

import pytest

from coprocessor.fhe.engine import OpRequest, get_backend
from coprocessor.fhe.envelope import BadCiphertext
from coprocessor.fhe.tfhe_backend import TfheRsEvaluator
from coprocessor.keycache import KeyCache
from coprocessor.types import FheType, Op

from ..keysets import session_keyset

U16 = FheType.Uint16


@pytest.fixture(scope="module")
def saved(tfhe_engine, tmp_path_factory):
    keyset = session_keyset("tfhe-rs")
    compute = get_backend("tfhe-rs").key_parts(keyset.server_key)["compute"]
    evaluator = TfheRsEvaluator(compute, keyset.key_id)
    cache = KeyCache(tmp_path_factory.mktemp("key-cache"), 2**40)
    path = cache.put("compute", evaluator.save_expanded)
    assert path is not None
    return keyset, evaluator, cache, path


def load(keyset):
    return lambda path, digest: TfheRsEvaluator.load_expanded(path, digest, keyset.key_id)


def test_a_cached_key_computes_what_the_original_computes(tfhe_engine, saved):
    keyset, original, cache, _path = saved
    cached = cache.get("compute", load(keyset))
    assert cached is not None
    assert cached.key_digest == original.key_digest == keyset.key_id[:8]
    assert type(cached._evaluator).__name__ == "_Contained"  # a panic stays an error
    a, b = tfhe_engine.enc(40_000, U16), tfhe_engine.enc(30_000, U16)
    request = OpRequest(Op.Add, (a, b), (), None, b"")
    result = cached.evaluate(request)
    assert tfhe_engine.dec(result) == (40_000 + 30_000) % 2**16
    assert result == original.evaluate(request)  # deterministic: the same ciphertext


@pytest.mark.parametrize("damage", ["flip", "cut", "append"])
def test_a_damaged_file_is_refused_by_its_digest(saved, tmp_path, damage):
    keyset, _, _, path = saved
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "cut":
        del data[-1000:]
    else:
        data += b"\0"
    copy = tmp_path / path.name
    copy.write_bytes(bytes(data))
    digest = path.name.split(".")[1]
    with pytest.raises(BadCiphertext, match="hashes to"):
        TfheRsEvaluator.load_expanded(copy, digest, keyset.key_id)


def test_a_file_gone_between_listing_and_reading_is_a_miss_not_an_error(saved, tmp_path):
    keyset, _, _, path = saved
    digest = path.name.split(".")[1]
    with pytest.raises(FileNotFoundError):  # an OSError: the cache keeps such files
        TfheRsEvaluator.load_expanded(tmp_path / "gone.key", digest, keyset.key_id)
    empty = KeyCache(tmp_path / "empty", 2**40)
    assert empty.get("compute", load(keyset)) is None
