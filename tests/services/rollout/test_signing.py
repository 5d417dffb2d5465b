"""Signed request ids: round trip, forgery, malformed values, keys."""

from __future__ import annotations

import pytest

from services.rollout.signing import RequestSigner, SignatureError

KEY = "signing-test-secret-0123456789abcdef"


def test_a_signed_id_verifies_to_its_request_id() -> None:
    signer = RequestSigner(KEY)
    for request_id in ("0192f3a4b5c67d8e9f0a1b2c3d4e5f60", "with.dots.in.it", "ü"):
        signed = signer.sign(request_id)
        assert signed.startswith(request_id + ".") and len(signed) == len(request_id) + 23
        assert signer.verify(signed) == request_id
    assert RequestSigner(KEY).sign("x") == signer.sign("x")  # replicas sharing the key agree


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("no-signature", "malformed"),
        ("short.abc", "malformed"),
        ("." + "A" * 22, "malformed"),
        ("other-id." + "A" * 22, "forged"),
    ],
)
def test_malformed_and_forged_ids_are_refused(value: str, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        RequestSigner(KEY).verify(value)
    assert info.value.reason == reason and info.value.context["field"] == "signed_request_id"


def test_another_key_or_another_id_does_not_verify() -> None:
    signed = RequestSigner(KEY).sign("rid")
    with pytest.raises(SignatureError, match="did not make"):
        RequestSigner("another-secret-0123456789abcdef-xyz").verify(signed)
    mac = signed.rsplit(".", 1)[1]
    with pytest.raises(SignatureError):
        RequestSigner(KEY).verify(f"rie.{mac}")
    unset = RequestSigner(None)  # a random key per process
    assert not unset.shared and RequestSigner(KEY).shared
    with pytest.raises(SignatureError):
        RequestSigner(None).verify(unset.sign("rid"))
