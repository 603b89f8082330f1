"""What the status endpoint refuses: foreign Host headers, form posts, missing tokens."""

from __future__ import annotations

from nodeorch.faces.request_policy import RequestPolicy, host_name


def test_host_names_lose_their_port_and_brackets() -> None:
    assert host_name("LocalHost:7947") == "localhost"
    assert host_name("[::1]:7947") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"


def test_a_foreign_host_header_is_refused_and_the_listen_address_localhost_and_allowed_names_pass() -> None:
    policy = RequestPolicy.for_listen("127.0.0.1:7947", allowed_hosts=["agent.internal"])
    for good in ("127.0.0.1:7947", "localhost:7947", "localhost", "agent.internal:7947"):
        assert policy.refusal(False, good, "", False, None) is None, good
    refused = policy.refusal(False, "attacker.example:7947", "", False, None)
    assert refused is not None and refused.status == 403 and "allowed_hosts" in refused.reason
    missing = policy.refusal(False, None, "", False, None)
    assert missing is not None and missing.status == 400
    assert policy.refusal(False, "127.0.0.2:7947", "", False, None) is not None, "another loopback address"


def test_a_wildcard_listener_accepts_ip_literals_but_not_names() -> None:
    policy = RequestPolicy.for_listen("0.0.0.0:7947")
    assert policy.refusal(False, "10.1.2.3:7947", "", False, None) is None
    assert policy.refusal(False, "rebound.example", "", False, None) is not None


def test_a_form_post_is_refused_and_json_or_the_custom_header_passes() -> None:
    policy = RequestPolicy.for_listen("127.0.0.1:7947")
    for form in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""):
        refused = policy.refusal(True, "127.0.0.1:7947", form, False, None)
        assert refused is not None and refused.status == 415, form
    assert policy.refusal(True, "127.0.0.1:7947", "application/json; charset=utf-8", False, None) is None
    assert policy.refusal(True, "127.0.0.1:7947", "text/plain", True, None) is None


def test_with_a_token_every_request_needs_it() -> None:
    policy = RequestPolicy.for_listen("127.0.0.1:7947", token="s3cret-token-of-length")
    for wrong in (None, "Bearer nope", "Basic s3cret-token-of-length", "s3cret-token-of-length"):
        refused = policy.refusal(False, "localhost", "", False, wrong)
        assert refused is not None and refused.status == 401, wrong
    assert policy.refusal(False, "localhost", "", False, "Bearer s3cret-token-of-length") is None


def test_a_unix_socket_does_not_check_the_host() -> None:
    policy = RequestPolicy.for_listen("unix:/run/nodeorch/api.sock")
    assert policy.refusal(False, "anything", "", False, None) is None
    assert policy.refusal(True, "anything", "text/plain", False, None) is not None
