"""nodeorch.toml: a tiny file works; each kind of mistake gets its precise message."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeorch.spec.node_config import load_node_config, parse_node_config
from nodeorch.spec.toml_tables import ConfigFileError


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_node_config(text, "/etc/nodeorch/nodeorch.toml", hostname=lambda: "host-7.example")


def test_an_empty_file_gives_sane_defaults() -> None:
    config = parse("")
    assert config.node.name == "host-7"
    assert config.node.data_dir == Path("/var/lib/nodeorch")
    assert config.cluster.name == "default" and not config.cluster.insecure
    assert config.gossip.bind == ("0.0.0.0", 7946) and config.gossip.profile == "lan"
    assert config.gossip.discovery == "mdns"
    assert config.api.listen == "127.0.0.1:7947"
    assert config.desired_path == Path("/etc/nodeorch/desired.toml")


def test_a_full_file_is_read() -> None:
    config = parse("""
[node]
name = "node-a"
data_dir = "/srv/nodeorch"
labels = { zone = "z1", disk = "ssd" }
[cluster]
name = "prod"
keyring = "/etc/nodeorch/keyring"
[gossip]
bind = "10.0.0.5:8000"
advertise = "10.0.0.5"
profile = "wan"
seeds = ["10.0.0.6:8000", "seed.example.internal"]
discovery = "none"
[api]
listen = "unix:/run/nodeorch/api.sock"
[desired]
path = "/srv/desired.toml"
""")
    assert config.node.labels == {"zone": "z1", "disk": "ssd"}
    assert config.gossip.advertise == ("10.0.0.5", 8000), "the advertise port defaults to the bind port"
    assert config.gossip.seeds == ("10.0.0.6:8000", "seed.example.internal")
    assert config.api.listen == "unix:/run/nodeorch/api.sock"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nnmae = 'x'\n",
         "nodeorch.toml:2: node.nmae: unknown key (known keys in [node]: name, data_dir, labels)"),
        ("[gossip]\nbind = 7946\n", "nodeorch.toml:2: gossip.bind: expected a string, got an integer 7946"),
        ("[gossip]\nbind = \"10.0.0.1:99999\"\n", "gossip.bind: port out of range"),
        ("[gossip]\nbind = \"myhost:7946\"\n", "gossip.bind: 'myhost' is not an IP address"),
        ("[gossip]\nprofile = \"metro\"\n", "gossip.profile: 'metro': expected lan, wan or local"),
        ("[gossip]\nseeds = [7946]\n", "gossip.seeds: each seed must be a \"host:port\" string"),
        ("[gossip]\nadvertise = \"0.0.0.0\"\n", "gossip.advertise: must be an address other hosts can reach"),
        ("[node]\ndata_dir = \"data\"\n", "node.data_dir: 'data' must be an absolute path"),
        ("[node]\nname = \"bad name!\"\n", "node.name: 'bad name!' is not a valid node name"),
        ("[api]\nlisten = \"0.0.0.0:7947\"\n", "api.listen: 0.0.0.0 is not a loopback address"),
        ("[cluster]\ninsecure = \"yes\"\n", "cluster.insecure: expected true or false, got a string 'yes'"),
        ("[colour]\n", "nodeorch.toml: colour: unknown key"),
        ("[node\nname = 1", "not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)"),
    ],
)
def test_each_mistake_names_the_file_line_key_and_problem(text: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    assert expected in str(caught.value)
    assert str(caught.value).startswith("/etc/nodeorch/nodeorch.toml")


def test_a_remote_api_address_needs_explicit_permission_and_a_token() -> None:
    with pytest.raises(ConfigFileError, match=r"api.allow_remote: .*needs \[api\] token_file"):
        parse("[api]\nlisten = \"10.0.0.5:7947\"\nallow_remote = true\n")
    config = parse("[api]\nlisten = \"10.0.0.5:7947\"\nallow_remote = true\ntoken_file = \"/etc/nodeorch/token\"\n")
    assert config.api.listen == "10.0.0.5:7947"
    assert config.api.token_file == Path("/etc/nodeorch/token")


def test_allowed_hosts_and_expect_are_checked() -> None:
    config = parse("[api]\nallowed_hosts = [\"Agent.Example\"]\n[cluster]\nexpect = 3\nexpect_timeout = \"2m\"\n")
    assert config.api.allowed_hosts == ("agent.example",)
    assert config.node.name == "host-7"
    assert (config.cluster.expect, config.cluster.expect_timeout) == (3, 120.0)
    with pytest.raises(ConfigFileError, match=r":2: api.allowed_hosts: 'evil/x' is not a host name"):
        parse("[api]\nallowed_hosts = [\"evil/x\"]\n")
    with pytest.raises(ConfigFileError, match=r"cluster.expect_timeout: 'soon' is not a duration"):
        parse("[cluster]\nexpect_timeout = \"soon\"\n")
    with pytest.raises(ConfigFileError, match=r"cluster.expect: -1"):
        parse("[cluster]\nexpect = -1\n")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        load_node_config(tmp_path / "nodeorch.toml")


def test_a_rendered_config_reads_back_as_given() -> None:
    from nodeorch.spec.node_config import render_node_config

    text = render_node_config(
        name="node-a", data_dir=Path("/srv/a"), cluster="dev", keyring=Path("/etc/k"), bind="127.0.0.2:7946",
        api="127.0.0.2:7947", desired=Path("/etc/d.toml"), seeds=["127.0.0.3:7946"], labels={"zone": "z1"},
    )
    config = parse(text)
    assert (config.node.name, config.node.data_dir, config.node.labels) == ("node-a", Path("/srv/a"), {"zone": "z1"})
    assert config.gossip.bind == ("127.0.0.2", 7946) and config.gossip.seeds == ("127.0.0.3:7946",)
    assert (config.api.listen, config.desired_path, config.cluster.keyring) == (
        "127.0.0.2:7947", Path("/etc/d.toml"), Path("/etc/k"))


def test_hooks_are_read_with_their_defaults() -> None:
    config = parse("""
[[hook]]
events = ["member.dead", "user.*"]
command = ["/usr/local/bin/page"]
[[hook]]
name = "audit"
events = ["*"]
command = ["logger", "-t", "nodeorch"]
timeout = "5s"
coalesce = "0s"
""")
    page, audit = config.hooks
    assert (page.name, page.events, page.command, page.timeout, page.coalesce) == (
        "hook-1", ("member.dead", "user.*"), ("/usr/local/bin/page",), 30.0, 1.0)
    assert (audit.name, audit.timeout, audit.coalesce) == ("audit", 5.0, 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[hook]]\ncommand = ["x"]\n', "nodeorch.toml:1: hook[0].events: missing: the event kinds"),
        ('[[hook]]\nevents = ["member.dead"]\n', "hook[0].command: missing: the argv to run"),
        ('[[hook]]\nevents = []\ncommand = ["x"]\n', "nodeorch.toml:2: hook[0].events: expected a non-empty list"),
        ('[[hook]]\nevents = ["*"]\ncommand = ["x"]\ntimeout = "0s"\n', "hook[0].timeout: must be more than 0"),
        ('[[hook]]\nevents = ["*"]\ncommand = ["x"]\nretries = 2\n', "nodeorch.toml:4: hook[0].retries: unknown key"),
        ('[[hook]]\nname = "a"\nevents = ["*"]\ncommand = ["x"]\n[[hook]]\nname = "a"\nevents = ["*"]\n'
         'command = ["x"]\n', "hook: two hooks have the same name"),
        ('hook = 3\n', "hook: expected a list"),
    ],
)
def test_each_hook_mistake_has_its_precise_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    assert expected in str(caught.value)
