"""bootc's transport names: one alias table in atoll.oci.transports."""

from __future__ import annotations

import pytest

from atoll.errors import InvalidReferenceError
from atoll.oci.transports import ImageName, ImageTransport, parse_bootc_name


@pytest.mark.parametrize(
    ("text", "transport", "expected"),
    [
        ("quay.io/a/b:1", None, "docker://quay.io/a/b:1"),
        ("localhost:5000/a:1", None, "docker://localhost:5000/a:1"),
        ("registry:quay.io/a/b:1", None, "docker://quay.io/a/b:1"),
        ("docker://quay.io/a/b:1", None, "docker://quay.io/a/b:1"),
        ("oci:/images:2", None, "oci:/images:2"),
        ("oci-archive:/x.tar", None, "oci-archive:/x.tar"),
        ("dir:/d", None, "dir:/d"),
        ("containers-storage:localhost/a:1", None, "containers-storage:localhost/a:1"),
        ("/images:2", "oci", "oci:/images:2"),
        ("quay.io/a/b:1", "registry", "docker://quay.io/a/b:1"),
    ],
)
def test_a_name_in_either_spelling(text: str, transport: str | None, expected: str) -> None:
    assert parse_bootc_name(text, transport) == ImageName.parse(expected)


@pytest.mark.parametrize("transport", list(ImageTransport))
def test_every_transport_round_trips_through_its_bootc_name(transport: ImageTransport) -> None:
    details = {
        ImageTransport.REGISTRY: "quay.io/a/b:1",
        ImageTransport.CONTAINERS_STORAGE: "localhost/a:1",
    }.get(transport, "/images:2")
    name = parse_bootc_name(details, transport)
    assert name.bootc_transport is transport
    assert name.details == (details if transport is not ImageTransport.DIR else "/images:2")
    assert parse_bootc_name(name.details, name.bootc_transport) == name


def test_a_bad_image_names_the_image() -> None:
    with pytest.raises(InvalidReferenceError, match="invalid image 'Bad Name'"):
        parse_bootc_name("Bad Name")
