"""A NAT lab in network namespaces: a "public" internet and homes behind routers that masquerade (DESIGN.md).

    public   pub:   bridge br0, 198.20.S.1/24 (S from the pid); mosquitto listens there (and a STUN/TURN server)
    home h   rtH:   wan0 198.20.S.(10+h) on the bridge, lan0 192.168.(B+h).1/24; forwards, nftables masquerades
                    the LAN out of wan0 and drops what comes in unasked (for itself or its LAN, as a home router's firewall
                    does: a dropped packet leaves no conntrack entry behind, so UDP hole punching works); optionally miniupnpd (Debian's
                    miniupnpd-nftables) serving UPnP-IGD and/or NAT-PMP on lan0
             hnH:   a node's namespace, eth0 192.168.(B+h).2/24, default route via its router

198.20.0.0/24 is outside every range miniupnpd refuses as an external address (private, CGNAT, 198.18/15, the
documentation nets); these addresses exist only inside the namespaces. The public side has no route into any
home: a node's LAN address told to another home leads nowhere, as on the internet.
"""

import os
import shutil
import subprocess

from tests.agent.netns import sh

MINIUPNPD = "/usr/sbin/miniupnpd"
TURNSERVER = "/usr/bin/turnserver"

# miniupnpd's tables (its nftables backend adds DNAT rules to prerouting_miniupnpd and accepts in miniupnpd)
ROUTER_NFT = """
table inet lab {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "wan0" ct state new drop
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" ip saddr {lan} masquerade
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""

MINIUPNPD_CONF = """ext_ifname=wan0
listening_ip=lan0
port=0
enable_upnp={upnp}
enable_natpmp={natpmp}
secure_mode=yes
system_uptime=yes
notify_interval=60
clean_ruleset_interval=600
uuid=fc4ec57e-b051-11db-88f8-0060085db3f{h}
upnp_table_name=lab
upnp_nat_table_name=lab
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 {lan} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def missing_tools() -> str | None:
    for tool, package in (("nft", "nftables"), (MINIUPNPD, "miniupnpd-nftables"), (TURNSERVER, "coturn")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs Debian's {package})"
    return None


class NatLab:
    """The public namespace and len(mapping) homes; mapping[h]: None (a router with no mapping at all),
    "upnp", "natpmp" or "both" (what its miniupnpd serves)."""

    def __init__(self, mapping: list[str | None], workdir: str):
        tag = f"{os.getpid() % 10000}"
        self.tag, self.workdir = tag, workdir
        self.s = 1 + os.getpid() % 250
        self.base = 100 + os.getpid() % 50
        self.pub = f"hpub{tag}"
        self.routers = [f"hrt{tag}x{h}" for h in range(1, len(mapping) + 1)]
        self.nodes = [f"hnat{tag}x{h}" for h in range(1, len(mapping) + 1)]
        self.mapping = mapping
        self.made: list[str] = []
        self.daemons: list[subprocess.Popen] = []
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    # addresses ----------------------------------------------------------------------------------------------

    @property
    def public(self) -> str:
        return f"198.20.{self.s}.1"

    def wan(self, h: int) -> str:
        return f"198.20.{self.s}.{10 + h}"

    def lan(self, h: int) -> str:
        return f"192.168.{self.base + h}.0/24"

    def node_address(self, h: int) -> str:
        return f"192.168.{self.base + h}.2"

    # building -------------------------------------------------------------------------------------------------

    def _add(self, ns: str):
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _make(self):
        self._add(self.pub)
        sh("ip", "-n", self.pub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.pub, "addr", "add", f"{self.public}/24", "dev", "br0")
        sh("ip", "-n", self.pub, "link", "set", "br0", "up")
        for h, (router, node) in enumerate(zip(self.routers, self.nodes), 1):
            self._add(router)
            self._add(node)
            wan = f"hw{self.tag}x{h}"
            sh("ip", "link", "add", "wan0", "netns", router, "type", "veth", "peer", "name", wan, "netns", self.pub)
            sh("ip", "-n", self.pub, "link", "set", wan, "master", "br0", "up")
            sh("ip", "-n", router, "addr", "add", f"{self.wan(h)}/24", "dev", "wan0")
            sh("ip", "-n", router, "link", "set", "wan0", "up")
            sh("ip", "-n", router, "route", "add", "default", "via", self.public)
            sh("ip", "link", "add", "lan0", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", node)
            sh("ip", "-n", router, "addr", "add", f"192.168.{self.base + h}.1/24", "dev", "lan0")
            sh("ip", "-n", router, "link", "set", "lan0", "up")
            sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", node, "addr", "add", f"{self.node_address(h)}/24", "dev", "eth0")
            sh("ip", "-n", node, "link", "set", "eth0", "up")
            sh("ip", "-n", node, "route", "add", "default", "via", f"192.168.{self.base + h}.1")
            self._nft(router, ROUTER_NFT.format(lan=self.lan(h)))
            if self.mapping[h - 1]:
                self._miniupnpd(h)

    def _nft(self, ns: str, ruleset: str):
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, text=True,
                           capture_output=True)
        if r.returncode:
            raise RuntimeError(f"nft in {ns}: {r.stderr.strip()}")

    def _miniupnpd(self, h: int):
        kind = self.mapping[h - 1]
        conf = os.path.join(self.workdir, f"miniupnpd-{h}.conf")
        with open(conf, "w") as f:
            f.write(MINIUPNPD_CONF.format(upnp="yes" if kind in ("upnp", "both") else "no",
                                          natpmp="yes" if kind in ("natpmp", "both") else "no",
                                          lan=self.lan(h), h=h))
        log = open(os.path.join(self.workdir, f"miniupnpd-{h}.log"), "w")
        self.daemons.append(subprocess.Popen(
            ["ip", "netns", "exec", self.routers[h - 1], MINIUPNPD, "-d", "-f", conf,
             "-P", os.path.join(self.workdir, f"miniupnpd-{h}.pid")], stdout=log, stderr=subprocess.STDOUT))

    def stun(self) -> str:
        """coturn (Debian's) in the public namespace: STUN and TURN (user hearth, password lab) on PUBLIC:3478;
        returns the ice_servers setting (a comma list)."""
        log = open(os.path.join(self.workdir, "coturn.log"), "w")
        self.daemons.append(subprocess.Popen(
            ["ip", "netns", "exec", self.pub, TURNSERVER, "-n", f"--listening-ip={self.public}",
             f"--relay-ip={self.public}", "--listening-port=3478", "--no-tls", "--no-dtls", "--no-cli",
             "--lt-cred-mech", "--user=hearth:lab", "--realm=hearth.lab", "--log-file=stdout", "--simple-log",
             f"--userdb={os.path.join(self.workdir, 'turndb')}",
             f"--pidfile={os.path.join(self.workdir, 'coturn.pid')}"], stdout=log, stderr=subprocess.STDOUT))
        return f"stun:{self.public}:3478,turn:hearth:lab@{self.public}:3478"

    # what the tests look at or do ---------------------------------------------------------------------------

    def forwarded(self, h: int) -> str:
        """The DNAT rules miniupnpd keeps on home h's router (its mappings)."""
        return subprocess.run(["ip", "netns", "exec", self.routers[h - 1], "nft", "list", "chain", "inet", "lab",
                               "prerouting_miniupnpd"], capture_output=True, text=True).stdout

    def silence(self, h: int, on: bool = True):
        """Drop (or stop dropping) everything home h's node sends or receives through its router."""
        router = self.routers[h - 1]
        if on:
            self._nft(router, 'table inet silence {\n chain f {\n  type filter hook forward priority -10;\n'
                              '  iifname "lan0" drop\n  oifname "lan0" drop\n }\n}\n')
        else:
            subprocess.run(["ip", "netns", "exec", router, "nft", "delete", "table", "inet", "silence"],
                           capture_output=True)

    def symmetric(self, h: int):
        """Make home h's router a symmetric NAT for new flows (a random external port for each destination):
        hole punching fails there, and only a TURN relay joins it to another home."""
        self._nft(self.routers[h - 1], "table ip symmetric {\n chain postrouting {\n"
                  "  type nat hook postrouting priority 99; policy accept;\n"
                  f'  oifname "wan0" ip saddr {self.lan(h)} masquerade fully-random\n }}\n}}\n')

    def close(self):
        for proc in self.daemons:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.daemons = []
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []
