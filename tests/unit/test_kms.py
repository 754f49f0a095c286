"""KMS material: digests as the gateway announces them, and fetching that never takes
bytes that do not match (whoever serves them) nor gives up on a node that is down."""

from __future__ import annotations

import hashlib

import pytest

from coprocessor.errors import ServiceUnavailable
from coprocessor.kms import (
    CRS_SEPARATOR,
    KEY_SEPARATOR,
    ActivateKey,
    DigestMismatch,
    KeyType,
    StorageRefused,
    check_storage_url,
    crs_object_key,
    fetch_keyset,
    fetch_url,
    fetch_verified,
    kms_tenant_name,
    material_digest,
    object_url,
)
from coprocessor.tenants import check_name

KEY_ID = (4 << 248) | 1


def test_the_digest_is_shake256_of_the_separator_and_the_bytes():
    assert material_digest(KEY_SEPARATOR, b"abc") == hashlib.shake_256(b"PDAT_KEYabc").digest(32)
    assert len(KEY_SEPARATOR) == len(CRS_SEPARATOR) == 8
    # The separator keeps a key's digest from passing as a CRS's.
    assert material_digest(KEY_SEPARATOR, b"abc") != material_digest(CRS_SEPARATOR, b"abc")


def test_objects_are_named_by_the_id_in_64_hex_digits():
    assert object_url("http://kms/bucket/", "ServerKey", KEY_ID) == (
        "http://kms/bucket/ServerKey/04" + "0" * 61 + "1"
    )
    assert crs_object_key(5).endswith("0" * 63 + "5")


def serving(objects: dict[str, bytes], down: set[str] = frozenset()):
    def fetch(url: str, limit: int) -> bytes:
        for prefix in down:
            if url.startswith(prefix):
                raise ServiceUnavailable("kms storage", f"GET {url}: refused")
        if url not in objects:
            raise ServiceUnavailable("kms storage", f"GET {url}: HTTP 404")
        return objects[url]

    return fetch


def test_the_first_node_serving_matching_bytes_wins():
    good, bad = b"the key", b"a forged key"
    digest = material_digest(KEY_SEPARATOR, good)
    objects = {
        object_url("http://a", "ServerKey", 1): bad,
        object_url("http://b", "ServerKey", 1): good,
    }
    fetched = fetch_verified(
        ["http://a", "http://b"], "ServerKey", 1, KEY_SEPARATOR, digest, serving(objects)
    )
    assert fetched == good


def test_bytes_that_match_nowhere_are_refused_and_a_node_down_is_retried():
    digest = material_digest(KEY_SEPARATOR, b"the key")
    forged = {object_url("http://a", "ServerKey", 1): b"forged"}
    with pytest.raises(DigestMismatch, match="no storage URL served bytes"):
        fetch_verified(["http://a"], "ServerKey", 1, KEY_SEPARATOR, digest, serving(forged))
    # One node forged, one down: the down one may serve the right bytes later.
    with pytest.raises(ServiceUnavailable):
        fetch_verified(
            ["http://a", "http://b"],
            "ServerKey",
            1,
            KEY_SEPARATOR,
            digest,
            serving(forged, down={"http://b"}),
        )
    with pytest.raises(DigestMismatch, match="lists no storage URL"):
        fetch_verified([], "ServerKey", 1, KEY_SEPARATOR, digest, serving({}))


def test_only_allowed_http_urls_are_fetched():
    with pytest.raises(StorageRefused, match="not http"):
        check_storage_url("file:///etc/passwd")
    with pytest.raises(StorageRefused, match="FHE_KMS_STORAGE_URL_PREFIXES"):
        check_storage_url("http://169.254.169.254/latest", ["https://kms.example/"])
    check_storage_url("https://kms.example/bucket/ServerKey/1", ["https://kms.example/"])
    with pytest.raises(ServiceUnavailable):
        fetch_url("http://127.0.0.1:9/nothing-listens-here", 1024, deadline_s=2)
    # A node serving a refused URL counts as refused, not as down: the digest decides.
    digest = material_digest(KEY_SEPARATOR, b"the key")
    with pytest.raises(DigestMismatch, match="not http"):
        fetch_verified(["ftp://a"], "ServerKey", 1, KEY_SEPARATOR, digest, serving({}))


def test_redirects_and_oversized_bodies_are_refused(tmp_path):
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    (tmp_path / "big").write_bytes(b"x" * 5000)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(StorageRefused, match="redirected"):
            fetch_url(f"{base}/moved", 1024)
        with pytest.raises(StorageRefused, match="more than 1024"):
            fetch_url(f"{base}/big", 1024)
        assert fetch_url(f"{base}/big", 5000) == b"x" * 5000
    finally:
        server.shutdown()


def test_a_keyset_needs_both_digests():
    event = ActivateKey(KEY_ID, ("http://a",), {KeyType.SERVER: bytes(32)})
    with pytest.raises(DigestMismatch, match="no digest for"):
        fetch_keyset(event, fetch=serving({}))


def test_a_keyset_comes_without_a_client_key():
    server, public = b"server key bytes", b"public key bytes"
    event = ActivateKey(
        KEY_ID,
        ("http://a",),
        {
            KeyType.SERVER: material_digest(KEY_SEPARATOR, server),
            KeyType.PUBLIC: material_digest(KEY_SEPARATOR, public),
        },
    )
    objects = {
        object_url("http://a", "ServerKey", KEY_ID): server,
        object_url("http://a", "PublicKey", KEY_ID): public,
    }
    keyset = fetch_keyset(event, fetch=serving(objects))
    assert (keyset.client_key, keyset.server_key, keyset.public_params) == (b"", server, public)


def test_tenant_names_for_kms_keys_are_valid_and_distinct():
    names = {kms_tenant_name(KEY_ID + i) for i in range(100)}
    assert len(names) == 100
    for name in names:
        assert check_name(name) == name
