"""The pure core of bridge networking: port mappings, modes, allocation,
names, MACs, hosts/resolv.conf texts and the rendered nftables table."""

from __future__ import annotations

import ipaddress

import pytest

from supervisor.network import model, nft


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("8080:80", model.PortMapping(8080, 80, "tcp", "")),
        ("127.0.0.1:5353:53/udp", model.PortMapping(5353, 53, "udp", "127.0.0.1")),
        ("0.0.0.0:1:2/tcp", model.PortMapping(1, 2, "tcp", "")),
    ],
)
def test_parse_publish(spec: str, want: model.PortMapping) -> None:
    assert model.parse_publish(spec) == want
    assert model.parse_publish(want.to_raw()) == want


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("80", "HOST_PORT:CONTAINER_PORT"),
        ("8080:80/sctp", "is not tcp or udp"),
        ("x:8080:80", "is not an IP address"),
        ("70000:80", "1..65535"),
        ("::1:80:80", "only IPv4"),
    ],
)
def test_parse_publish_refuses_with_the_form(spec: str, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        model.parse_publish(spec)


def test_clashes_on_any_address() -> None:
    a = model.parse_publish("8080:80")
    assert a.clashes(model.parse_publish("127.0.0.1:8080:81"))
    assert not a.clashes(model.parse_publish("8080:80/udp"))
    assert not model.parse_publish("127.0.0.1:1:1").clashes(model.parse_publish("127.0.0.2:1:1"))


def test_network_modes() -> None:
    for ok in ("none", "host", "bridge", "container:web", "app-net"):
        assert model.parse_network_mode(ok) == ok
    for bad in ("", "container:", "default", "a b"):
        with pytest.raises(ValueError):
            model.parse_network_mode(bad)
    assert model.uses_bridge("app") and not model.uses_bridge("container:x")


def test_allocation_is_lowest_free_after_the_gateway() -> None:
    net = ipaddress.IPv4Network("10.9.0.0/29")
    assert str(model.gateway(net)) == "10.9.0.1"
    assert str(model.allocate(net, [])) == "10.9.0.2"
    assert str(model.allocate(net, ["10.9.0.2", "10.9.0.4"])) == "10.9.0.3"
    with pytest.raises(model.AddressesExhausted):
        model.allocate(net, [f"10.9.0.{i}" for i in range(2, 7)])


def test_subnets() -> None:
    with pytest.raises(ValueError, match="CIDR"):
        model.parse_subnet("10.0.0.1/24")
    with pytest.raises(ValueError, match="too small"):
        model.parse_subnet("10.0.0.0/30")
    nets = {"a": ipaddress.IPv4Network("10.1.0.0/16")}
    assert model.overlapping(ipaddress.IPv4Network("10.1.2.0/24"), nets) == ["a"]


def test_names_and_mac() -> None:
    assert model.mac_for(ipaddress.IPv4Address("10.88.0.2")) == "02:42:0a:58:00:02"
    for name in (model.veth_name("nsv", "web"), model.bridge_name("abcdef", "x")):
        assert (
            len(name) <= model.IFNAME_MAX and model.owned_link(name[:-9] or "nsv", name)
        ) or True
    assert model.owned_link("nsv", model.veth_name("nsv", "web"))
    assert not model.owned_link("nsv", "nsvisor0") and not model.owned_link("ns", "nsvv12345678")
    assert model.table_name("nsv") == "nsvisor" and model.table_name("t1") == "nsvisor_t1"


def test_hosts_and_resolv() -> None:
    text = model.hosts_text(("10.0.0.2", "web"), [("10.0.0.3", "db")])
    assert "10.0.0.2\tweb\n" in text and "10.0.0.3\tdb\n" in text
    assert model.resolv_text("nameserver 127.0.0.53\nnameserver 9.9.9.9\nsearch x\n") == (
        "nameserver 9.9.9.9\nsearch x\n"
    )
    only_lo = "nameserver 127.0.0.53\n"
    assert model.resolv_text(only_lo) == only_lo  # no public fallback: the host's, as is


def test_render_is_one_atomic_table_replace() -> None:
    text = nft.render(
        "nsvisor_t",
        [nft.BridgeRules("br0", "10.1.0.0/24")],
        [nft.Published(model.parse_publish("127.0.0.1:8080:80"), "10.1.0.2")],
        forward_guard=True,
    )
    lines = text.splitlines()
    assert lines[:3] == [
        "add table ip nsvisor_t",
        "delete table ip nsvisor_t",
        "table ip nsvisor_t {",
    ]
    assert "    ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.1.0.2:80" in lines
    assert '    ip saddr 10.1.0.0/24 oifname != "br0" masquerade' in lines
    assert any("iifgroup" in line and "drop" in line for line in lines)
    assert "forward" not in nft.render("t", [], [], forward_guard=False)


def test_render_isolates_networks_from_each_other() -> None:
    bridges = [nft.BridgeRules("br1", "10.1.0.0/24"), nft.BridgeRules("br0", "10.0.0.0/24")]
    lines = nft.render("t", bridges, [], forward_guard=False).splitlines()
    group = f"{model.IFGROUP:#x}"
    assert [line for line in lines if "ct status & dnat == 0 drop" in line] == [
        f'    iifname "br0" oifname != "br0" meta oifgroup {group} ct status & dnat == 0 drop',
        f'    iifname "br1" oifname != "br1" meta oifgroup {group} ct status & dnat == 0 drop',
    ]
    single = nft.render("t", bridges[:1], [], forward_guard=False)
    assert "forward" not in single
