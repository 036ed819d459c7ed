"""docs/abi.md is generated from acrn.uapi and acrn.uapi_doc, and stays complete and current."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from acrn import uapi, uapi_doc

ABI_MD = Path(__file__).resolve().parent.parent / "docs" / "abi.md"


def test_checked_in_abi_page_is_current() -> None:
    assert ABI_MD.read_text() == uapi_doc.render(), "regenerate: python -m acrn.uapi_doc > docs/abi.md"


@pytest.mark.parametrize("struct", uapi.STRUCTS, ids=[s.__name__ for s in uapi.STRUCTS])
def test_every_field_has_a_description(struct: type[ctypes.Structure]) -> None:
    doc = uapi_doc.STRUCTS[struct.__name__]
    paths = [r.path for r in uapi_doc.rows(struct) if r.ctype != "(padding)"]
    assert sorted(paths) == sorted(doc.fields), "descriptions and fields differ"
    assert all(text.strip() for text in doc.fields.values())


def test_every_struct_and_ioctl_is_documented() -> None:
    assert set(uapi_doc.STRUCTS) == {s.__name__ for s in uapi.STRUCTS}
    assert set(uapi_doc.IOCTL_HYPERCALLS) == {n.removeprefix("ACRN_IOCTL_") for n in uapi.IOCTLS}


def test_rows_cover_every_byte_of_a_struct() -> None:
    for struct in uapi.STRUCTS:
        top = [r for r in uapi_doc.rows(struct) if "." not in r.path]
        if issubclass(struct, ctypes.Union) or struct is uapi.acrn_io_request_buffer:
            continue
        assert sum(r.size for r in top) == ctypes.sizeof(struct), struct.__name__


def test_abi_page_states_the_set_vcpu_regs_review_answers() -> None:
    text = ABI_MD.read_text()
    assert "| 284 | 4 | (padding) | (tail padding) |" in text  # acrn_regs' unchecked tail padding
    assert "16 bytes, alignment 1, packed" in text  # acrn_descriptor_ptr
    assert "256 bytes, alignment 256" in text  # acrn_io_request
    assert "little-endian" in text
