import pytest
from hypothesis import given
from hypothesis import strategies as st

from coprocessor.types import COMPUTED_INDEX, FheType, Handle, Op, make_handle


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Uint64", FheType.Uint64),
        ("euint8", FheType.Uint8),
        ("ebool", FheType.Bool),
        ("bool", FheType.Bool),
        (7, FheType.Uint160),
        ("Bytes256", FheType.Bytes256),
    ],
)
def test_type_parse(text, expected):
    assert FheType.parse(text) is expected


@pytest.mark.parametrize("bad", ["Uint7", "", "int64", 12, -1])
def test_type_parse_rejects(bad):
    with pytest.raises(ValueError, match="type"):
        FheType.parse(bad)


def test_type_bits_and_max():
    assert [t.bits for t in FheType][:9] == [1, 4, 8, 16, 32, 64, 128, 160, 256]
    assert FheType.Uint8.max_value == 255


def test_op_codes_are_the_wire_contract():
    assert Op.Add == 0 and Op.Not == 21 and Op.Cast == 23 and Op.MulDiv == 30
    assert 22 not in {int(op) for op in Op}
    assert Op.parse("FheIfThenElse") is Op.IfThenElse
    assert Op.parse(14) is Op.Ge
    assert Op.IfThenElse.event_name == "FheIfThenElse"


@pytest.mark.parametrize("bad", ["FheFoo", "Add2", 22, 31])
def test_op_parse_rejects(bad):
    with pytest.raises(ValueError, match="unknown op"):
        Op.parse(bad)


@given(
    prehandle=st.binary(min_size=21, max_size=21),
    index=st.integers(0, 255),
    chain_id=st.integers(0, 2**64 - 1),
    fhe_type=st.sampled_from(list(FheType)),
)
def test_handle_layout_round_trips(prehandle, index, chain_id, fhe_type):
    handle = make_handle(prehandle, index, chain_id, fhe_type)
    assert len(handle.raw) == 32
    assert handle.raw[:21] == prehandle
    assert handle.index == index and handle.chain_id == chain_id
    assert handle.fhe_type is fhe_type and handle.version == 0
    assert handle.is_computed == (index == COMPUTED_INDEX)
    assert Handle.parse(handle.hex()) == handle


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1234", "0x-prefixed"),
        ("0xzz", "not valid hex"),
        ("0x" + "00" * 31, "32 bytes"),
        ("0x" + "00" * 33, "32 bytes"),
        ("0x" + "00" * 30 + "0c00", "type byte 12"),
    ],
)
def test_handle_parse_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        Handle.parse(text)


def test_make_handle_range_checks():
    with pytest.raises(ValueError, match="chain id"):
        make_handle(bytes(21), 0, 2**64, FheType.Bool)
    with pytest.raises(ValueError, match="index"):
        make_handle(bytes(21), 256, 1, FheType.Bool)
