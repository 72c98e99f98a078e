from __future__ import annotations

import pytest

from atoll.failover import Advert, AdvertError, decode

KEY = b"k" * 32


def test_an_advert_round_trips() -> None:
    advert = Advert(7, 150, 100, "dev1", "127.0.0.1:8080")
    data = advert.encode()
    assert data[:4] == b"ATFO"
    assert decode(data) == advert
    assert decode(advert.encode(KEY), key=KEY) == advert
    assert advert.interval == 1.0


def test_the_layout_is_the_documented_one() -> None:
    data = Advert(1, 2, 300, "n", "a:1").encode()
    assert data == b"ATFO\x01\x00\x01\x02\x01\x2c" + b"\x01n" + b"\x03a:1"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "too short"),
        (b"XXXX" + Advert(1, 1, 1, "n", "a").encode()[4:], "bad magic"),
        (b"ATFO\x02" + Advert(1, 1, 1, "n", "a").encode()[5:], "version 2"),
        (Advert(1, 1, 1, "n", "a").encode()[:-1], "address length"),
        (Advert(1, 1, 1, "n", "a").encode() + b"x", "bytes after"),
        (b"ATFO\x01\x00\x01\xff\x00\x64\x01n\x01a", "priority 255"),
        (b"ATFO\x01\x00\x01\x01\x00\x00\x01n\x01a", "interval 0"),
        (b"ATFO\x01\x00\x01\x01\x00\x64\x00\x01a", "name length 0"),
    ],
)
def test_malformed_datagrams_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(AdvertError, match=why):
        decode(data)


def test_with_a_key_only_signed_adverts_pass() -> None:
    advert = Advert(1, 100, 100, "dev1", "127.0.0.1:8080")
    with pytest.raises(AdvertError, match="not signed"):
        decode(advert.encode(), key=KEY)
    with pytest.raises(AdvertError, match="HMAC does not match"):
        decode(advert.encode(b"other key 123456"), key=KEY)
    signed = bytearray(advert.encode(KEY))
    signed[7] = 254  # a changed priority
    with pytest.raises(AdvertError, match="HMAC does not match"):
        decode(bytes(signed), key=KEY)
    with pytest.raises(AdvertError, match="no key is configured"):
        decode(advert.encode(KEY))
