"""The link classifier: a peer's address is LAN (loopback, link-local, the node's own subnets, the configured
list) or WAN (the rest, and a router's WAN side)."""

import ipaddress

import pytest

from edge.governor.links import LAN, WAN, LinkClassifier


def nets(*cidrs):
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def test_own_subnets_loopback_and_link_local_are_lan():
    c = LinkClassifier(interfaces={"lo": nets("127.0.0.1/8"), "eth0": nets("192.168.1.5/24", "fd00::5/64")},
                       routed=False, wan_interfaces={"eth0"})
    assert c.classify("192.168.1.77") == LAN
    assert c.classify("127.0.0.1") == LAN
    assert c.classify("169.254.3.4") == LAN
    assert c.classify("fe80::1%eth0") == LAN
    assert c.classify("fd00::99") == LAN
    assert c.classify("::ffff:192.168.1.9") == LAN
    assert c.classify("8.8.8.8") == WAN
    assert c.classify("2001:db8::1") == WAN


def test_a_routers_wan_side_is_wan_and_the_configured_list_is_lan():
    c = LinkClassifier(["10.8.0.0/16"], interfaces={"br-lan": nets("192.168.1.1/24"),
                                                    "wan": nets("203.0.113.2/24")},
                       routed=True, wan_interfaces={"wan"})
    assert c.classify("203.0.113.9") == WAN   # the ISP's subnet, on the default route's interface
    assert c.classify("192.168.1.20") == LAN
    assert c.classify("10.8.44.1") == LAN
    assert c.classify("not an address") == WAN


def test_refresh_sees_a_new_interface():
    interfaces = {"eth0": nets("192.168.1.5/24")}
    c = LinkClassifier(interfaces=interfaces, routed=False)
    assert c.classify("10.1.2.3") == WAN
    generation = c.generation
    interfaces["wg0"] = nets("10.1.0.1/16")
    assert c.refresh() is True
    assert c.generation == generation + 1
    assert c.classify("10.1.2.3") == LAN
    assert c.refresh() is False


def test_a_bad_cidr_is_named():
    with pytest.raises(ValueError, match="'10.0.0.300/8'"):
        LinkClassifier(["10.0.0.300/8"], interfaces={}, routed=False)


def test_the_hosts_own_interfaces_are_read():
    c = LinkClassifier()
    assert c.classify("127.0.0.1") == LAN
    assert c.networks
