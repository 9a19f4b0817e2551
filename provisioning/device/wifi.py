"""Wi-Fi on the device: first boot writes the seed's network as wpa_supplicant's configuration (the derived
key only, in a directory root's alone), and hearth-wifi.service joins it on the box's wireless interface."""

import hashlib
import os
import stat
import time

from edge.atomic import open_dir, remove_stale_temps, write_atomic

WIFI_CONF = os.path.join("network", "wifi.conf")     # in the data directory: root only, the derived key only


def wpa_supplicant_conf(ssid: str, psk: str, country: str = "") -> str:
    """wpa_supplicant's configuration for one network. The passphrase never reaches the disk: WPA's key is
    PBKDF2-SHA1(passphrase, SSID, 4096 rounds), which is all wpa_supplicant needs (what wpa_passphrase does)."""
    lines = ["# written by Hearth's first boot from the seed; the passphrase itself is not kept",
             "ctrl_interface=DIR=/run/wpa_supplicant", "update_config=0"]
    if country:
        lines.append(f"country={country.upper()}")
    lines += ["network={", f"    ssid={ssid.encode().hex()}"]
    if not psk:
        lines.append("    key_mgmt=NONE")
    else:
        key = psk.lower() if len(psk) == 64 else hashlib.pbkdf2_hmac("sha1", psk.encode(), ssid.encode(), 4096,
                                                                       32).hex()
        lines.append(f"    psk={key}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def wireless_interfaces(sys_net: str = "/sys/class/net") -> list[str]:
    try:
        names = sorted(os.listdir(sys_net))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(sys_net, n, "wireless"))
            or os.path.isdir(os.path.join(sys_net, n, "phy80211"))]



def write_wifi(data: int, conf: str) -> None:
    """network/wifi.conf, in a directory that is root's alone (taken back if the service user made one; a link
    planted in its place is removed, not followed)."""
    name = os.path.dirname(WIFI_CONF)
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=data, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=data)
    except FileNotFoundError:
        pass
    d = open_dir(name, data, create_mode=0o700)
    try:
        if os.geteuid() == 0 and os.fstat(d).st_uid != 0:
            os.fchown(d, 0, 0)
        os.fchmod(d, 0o700)
        remove_stale_temps([os.path.basename(WIFI_CONF)], d)
        write_atomic(os.path.basename(WIFI_CONF), conf.encode(), 0o600, dir_fd=d)
    finally:
        os.close(d)


def join_command(data_dir: str, wait: float, sys_net: str = "/sys/class/net") -> tuple[list[str] | None, str]:
    """`hearth provision wifi`: (the wpa_supplicant command that joins the configured network, "joining …"), or
    (None, why not: no network configured, or no wireless interface within `wait` seconds; its driver may load
    its firmware late)."""
    conf = os.path.join(data_dir, WIFI_CONF)
    if not os.path.exists(conf):
        return None, "hearth: no Wi-Fi network configured (the seed had no [network] wifi_ssid)"
    deadline = time.monotonic() + wait
    while not (ifaces := wireless_interfaces(sys_net)) and time.monotonic() < deadline:
        time.sleep(1)
    if not ifaces:
        return None, "hearth: a Wi-Fi network is configured, but this box has no wireless interface; staying on " \
                     "Ethernet"
    return ["wpa_supplicant", "-i", ifaces[0], "-c", conf, "-D", "nl80211,wext", "-s"], \
        f"hearth: joining Wi-Fi on {ifaces[0]}"
