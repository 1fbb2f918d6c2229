"""A rule's header value `"***"` in `PATCH /v1/capsules/{id}/network` keeps the secret stored for that
domain and header (the dashboard edits rules whose values it cannot read). Attacks: moving a stored
secret to another domain (one the attacker reads) or under another header name, or conjuring one that
does not exist. No VM: the policy's merge itself."""

from __future__ import annotations

import pytest

from wrenn.controlplane._errors import ApiError
from wrenn.controlplane.service.network import NetworkBody, NetworkSpec, from_v1

STORED = NetworkSpec(
    allow_out=("api.example.com", "evil.example.net"),
    rules={"api.example.com": {"Authorization": "Bearer sk-secret", "X-Team": "t1"}},
)


def _rules(rules: dict[str, dict[str, str]]) -> NetworkBody:
    return NetworkBody.model_validate(
        {"rules": {d: [{"transform": {"headers": h}}] for d, h in rules.items()}}
    )


def test_redacted_value_keeps_the_stored_secret_and_others_are_replaced_or_dropped() -> None:
    body = _rules({"api.example.com": {"Authorization": "***", "X-New": "v"}, "evil.example.net": {"A": "b"}})
    spec = from_v1(body, STORED)
    assert spec.rules == {
        "api.example.com": {"Authorization": "Bearer sk-secret", "X-New": "v"},
        "evil.example.net": {"A": "b"},
    }
    assert "sk-secret" not in str(spec.public())


@pytest.mark.parametrize(
    "rules",
    [
        {"evil.example.net": {"Authorization": "***"}},  # the secret moved to a domain the attacker reads
        {"api.example.com": {"X-Leak": "***"}},  # under another name (echoed back by some servers)
        {"other.example.org": {"X-Team": "***"}},  # a domain with no rules
    ],
)
def test_a_secret_cannot_move_to_another_domain_or_header(rules: dict[str, dict[str, str]]) -> None:
    with pytest.raises(ApiError) as caught:
        from_v1(_rules(rules), STORED)
    assert caught.value.status == 400
    assert "to keep" in caught.value.message
    assert "sk-secret" not in caught.value.message


def test_no_stored_policy_means_nothing_to_keep() -> None:
    with pytest.raises(ApiError):
        from_v1(_rules({"api.example.com": {"Authorization": "***"}}))
