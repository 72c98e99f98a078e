"""Writer/reader pairs round-trip, over structured inputs (hypothesis, derandomized
so that the suite is reproducible; the byte-level targets are in test_fuzz.py)."""

from __future__ import annotations

import datetime
import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.oci.digest import Digest
from atoll.oci.manifest import Descriptor, Platform
from atoll.store.tarstream import ByteReader, TarReader
from atoll.sysroot.bootloader.grubenv import format_grubenv, parse_grubenv
from atoll.updates.config import (
    format_duration,
    format_rate,
    parse_duration,
    parse_rate,
)

SETTINGS = settings(max_examples=100, derandomize=True, deadline=None)

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"))


@SETTINGS
@given(st.dictionaries(_names, _values.map(lambda v: v[:40]), max_size=12))
def test_grubenv(variables: dict[str, str]) -> None:
    assert parse_grubenv(format_grubenv(variables)) == variables


@SETTINGS
@given(st.integers(min_value=0, max_value=10**9))
def test_durations(seconds: int) -> None:
    delta = datetime.timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@SETTINGS
@given(st.integers(min_value=1, max_value=1 << 40))
def test_rates_are_read_back_within_the_printed_precision(rate: int) -> None:
    back = parse_rate(format_rate(rate).replace(" ", ""))
    # One decimal of the unit: off by at most half a tenth of it (5 %).
    assert abs(back - rate) <= rate // 20 + 1


_digests = st.binary(max_size=8).map(Digest.of)
_strings = st.text(max_size=12)
_descriptors = st.builds(
    Descriptor,
    st.sampled_from(["application/vnd.oci.image.layer.v1.tar", "x/y"]),
    _digests,
    st.integers(min_value=0, max_value=2**63),
    st.one_of(
        st.none(),
        st.builds(
            Platform,
            _strings.filter(bool),
            _strings.filter(bool),
            st.one_of(st.none(), _strings.filter(bool)),
            st.one_of(st.none(), _strings.filter(bool)),
        ),
    ),
    st.dictionaries(_strings, _strings, max_size=3),
    st.lists(_strings, max_size=2).map(tuple),
)


@SETTINGS
@given(_descriptors)
def test_descriptors(desc: Descriptor) -> None:
    assert Descriptor.from_json(desc.to_json(), "test") == desc


_paths = st.lists(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x10FFFF, exclude_characters="/"))
    .filter(lambda s: s not in (".", "..") and "\0" not in s)
    .map(lambda s: s[:40]),
    min_size=1,
    max_size=4,
).map("/".join)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            _paths,
            st.binary(max_size=2000),
            st.integers(min_value=0, max_value=2**21),
            st.dictionaries(
                st.sampled_from(["user.a", "security.capability", "trusted.x"]),
                # ASCII: tarfile writes a pax value as UTF-8 text.
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1).map(
                    lambda v: v[:30].encode()
                ),
                max_size=2,
            ),
        ),
        max_size=6,
        unique_by=lambda e: e[0],
    ),
    st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.integers(min_value=1, max_value=3000),
)
def test_tar_written_by_tarfile_reads_back(
    files: list[tuple[str, bytes, int, dict[str, bytes]]], fmt: int, piece: int
) -> None:
    raw = io.BytesIO()
    written = []
    with tarfile.open(fileobj=raw, mode="w", format=fmt, encoding="utf-8") as t:
        for path, data, uid, xattrs in files:
            info = tarfile.TarInfo(path)
            info.size, info.uid, info.mode = len(data), uid, 0o640
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("latin-1") for k, v in xattrs.items()
                }
            try:
                t.addfile(info, io.BytesIO(data))
            except ValueError:
                continue  # a name or number the format cannot hold: tarfile refuses it
            written.append((path, data, uid, xattrs if fmt == tarfile.PAX_FORMAT else {}))
    blob = raw.getvalue()
    reader = TarReader(
        ByteReader(iter([blob[i : i + piece] for i in range(0, len(blob), piece)])), "t"
    )
    got = [(e.path, reader.content(), e.uid, dict(e.xattrs or {})) for e in reader.entries()]
    assert got == written
