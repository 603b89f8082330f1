"""The profiles carry memberlist's defaults, and the derived formulas scale as documented."""

from __future__ import annotations

import pytest

from gossip import ConfigError, lan, local, profile, wan


def test_lan_profile_matches_memberlist_defaults() -> None:
    c = lan()
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.gossip_interval, c.gossip_nodes, c.retransmit_mult) == (0.2, 3, 4)
    assert (c.suspicion_mult, c.suspicion_max_timeout_mult, c.awareness_max_multiplier) == (4, 6, 8)
    assert (c.push_pull_interval, c.max_packet_size, c.tcp_timeout) == (30.0, 1400, 10.0)


def test_wan_and_local_profiles_differ_where_memberlist_does() -> None:
    w, lo = wan(), local()
    assert (w.probe_interval, w.probe_timeout, w.suspicion_mult, w.gossip_nodes) == (5.0, 3.0, 6, 4)
    assert (lo.probe_timeout, lo.indirect_checks, lo.retransmit_mult, lo.suspicion_mult) == (0.2, 1, 2, 3)
    assert profile("wan") == w


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="lan, wan, local"):
        profile("metro")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("probe_timeout", 2.0, "probe_timeout"),
        ("max_packet_size", 100, "max_packet_size"),
        ("max_meta_size", 4096, "max_meta_size"),
        ("gossip_nodes", 0, "gossip_nodes"),
    ],
)
def test_impossible_values_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        lan().replace(**{field: value})


@pytest.mark.parametrize(("members", "limit"), [(1, 4), (9, 4), (10, 8), (99, 8), (100, 12), (5000, 16)])
def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_1(members: int, limit: int) -> None:
    assert lan().retransmit_limit(members) == limit


def test_suspicion_timeouts_scale_with_log_of_cluster_size() -> None:
    c = lan()
    assert c.suspicion_min_timeout(5) == 4.0  # log10 floor of 1 below 10 members
    assert c.suspicion_min_timeout(100) == pytest.approx(8.0)
    assert c.suspicion_max_timeout(100) == pytest.approx(48.0)
    assert c.suspicion_confirmations(100) == 2
    assert c.suspicion_confirmations(3) == 0  # too few members to confirm anything


def test_push_pull_period_grows_past_32_members() -> None:
    c = lan()
    assert c.push_pull_period(32) == 30.0
    assert c.push_pull_period(64) == 60.0
    assert c.push_pull_period(1000) == 30.0 * 6
