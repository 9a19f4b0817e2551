"""First boot (hearth-firstboot.service, once): what turns a flashed image into this household's node.

Create the node's identity here on the device (it never leaves), apply the boot partition's seed
(provisioning/seed.py): write the settings into the data partition's hearth.toml, keep the fleet
certificate or the enrollment claim there, and rewrite the seed on the boot partition without its secrets. A
seed that does not parse stops first boot with a message on the console, and nothing is applied.
"""

import base64
import os
import pwd
import stat
import tomllib

from edge.atomic import (UnsafePathError, open_dir, read_regular, remove_stale_temps, update_toml, write_all,
                         write_atomic)
from edge.config import CONFIG_NAME
from edge.provisioning.device.claim import CLAIM_FILE, save_claim
from edge.provisioning.device.nodekey import load_identity, save_identity
from edge.provisioning.device.partition import grow_data_partition
from edge.provisioning.device.wifi import WIFI_CONF, wpa_supplicant_conf, write_wifi
from edge.provisioning.seed import (SECRETS, SEED_NAME, SIG_NAME, SeedError, check_seed_signature, parse_seed,
                                    render_seed, settings_from_seed)

FLEET_PUB = "/etc/hearth/fleet.pub"      # in an image built for a fleet: only seeds it signed are applied
MARKER = ".provisioned"         # root's, written last (hearth-firstboot.service runs while it is missing)
SEED_APPLIED = ".seed-applied"  # root's: the seed's text without secrets, written before the seed loses them
ROOT_FILES = {CLAIM_FILE, SEED_APPLIED, MARKER}     # with network/: never given to the service user


def provisioned(data_dir: str) -> bool:
    """Whether first boot has finished here: its marker is a regular file, and root's where root asks (the
    service user owns the data directory and could plant one; one it removes only makes first boot run again,
    which converges)."""
    try:
        st = os.stat(os.path.join(data_dir, MARKER), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and (os.geteuid() != 0 or st.st_uid == 0)


def scrub_seed(seed_path: str, clean: str) -> bool:
    """Replace the seed on the boot partition with `clean` (its text without secrets). The old bytes are first
    overwritten in place, so that on FAT (which rewrites a file's clusters in place) the secret's clusters hold
    the clean text before the file is replaced; returns whether anything was written. FAT and the card's flash
    controller may still keep old copies elsewhere: see the README's provisioning section."""
    old = read_regular(seed_path)
    if old is None or old == clean.encode():
        return False
    data = clean.encode()
    if len(data) < len(old):          # trailing spaces are still valid TOML, should the cut come right here
        data = data[:-1] + b" " * (len(old) - len(data)) + b"\n"
    fd = os.open(seed_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    if data != clean.encode():
        write_atomic(seed_path, clean.encode())
    return True


def _chown_tree(data_dir: str, uid: int, gid: int) -> None:
    """Give the data directory to the service user without following a link it may have planted there: a
    walk that does not enter linked directories, lchown, and no file with other hard links (one could be a
    root file linked in). The Wi-Fi key, the claim token and first boot's own records stay root's."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(data_dir, follow_symlinks=False):
        if dirpath == data_dir:
            dirnames[:] = [d for d in dirnames if d != os.path.dirname(WIFI_CONF)]
            filenames = [n for n in filenames if n not in ROOT_FILES]
        os.fchown(dirfd, uid, gid)
        for name in filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def first_boot(boot_dir: str, data_dir: str, user: str | None = None, log=print,
               fleet_pub: str = FLEET_PUB, grow: bool = False) -> dict:
    """Apply the seed (if any) once; returns what was done. Raises SeedError, applying nothing, on a bad seed
    (or, in an image built for a fleet, one its fleet did not sign). grow: first grow the data partition to the
    end of the disk (provisioning/device/partition.py).

    A power cut at any point leaves a state from which a second run ends where one uninterrupted run does:
    every file is replaced whole (edge/atomic.py), hearth.toml is parsed and written whole (a key set twice is
    there once), the identity is made only if none was saved, and the seed's clean text is recorded on the
    data partition (SEED_APPLIED) before the seed loses its secrets, so a run that finds the record knows the
    seed was applied and only finishes scrubbing it. The marker comes last. Root writes in a directory the
    service user owns, so no link is followed there (see edge/atomic.py and _chown_tree)."""
    from edge.datadir import MARKER as DATA_MARKER, MARKER_TEXT
    from edge.identity import KEY_FILE, Identity, public_key_of
    os.makedirs(data_dir, exist_ok=True)
    if grow and not provisioned(data_dir):
        grow_data_partition(log=log)
    if provisioned(data_dir):
        return {"already": True}
    data = open_dir(data_dir)
    try:
        remove_stale_temps([KEY_FILE, "fleet.cert", CLAIM_FILE, CONFIG_NAME, SEED_APPLIED, MARKER, DATA_MARKER], data)
        seed_path = os.path.join(boot_dir, SEED_NAME)
        if os.path.isdir(boot_dir):
            boot = open_dir(boot_dir)
            try:
                remove_stale_temps([SEED_NAME], boot)
            finally:
                os.close(boot)
        key_where = os.path.join(data_dir, KEY_FILE)
        try:
            record = read_regular(SEED_APPLIED, data, 65536, owner=os.geteuid())
        except UnsafePathError:
            # a link, or a file of another owner, was planted by the service user (to make first boot skip the
            # seed): ignored; the record written after applying the seed replaces it
            record = None
        if record is not None:
            # an earlier run applied the seed and was cut short while (or before) removing its secrets
            clean = record.decode()
            seed = tomllib.loads(clean)
            identity = load_identity(data, key_where)
            if identity is None:
                raise SeedError(f"{data_dir}/{SEED_APPLIED} says the seed was applied, but {key_where} is "
                                "missing; the data partition was changed by hand")
            settings = settings_from_seed(seed)
        else:
            seed, clean = {}, None
            fleet_id = None
            if os.path.exists(fleet_pub):
                with open(fleet_pub) as f:
                    fleet_id = f.read().strip()
            if os.path.exists(seed_path):
                with open(seed_path) as f:
                    text = f.read()
                if fleet_id:
                    sig_path = os.path.join(boot_dir, SIG_NAME)
                    sig = open(sig_path, "rb").read() if os.path.exists(sig_path) else None
                    check_seed_signature(text, sig, fleet_id, seed_path)
                seed = parse_seed(text, seed_path)
            identity = load_identity(data, key_where)
            settings = settings_from_seed(seed)
            cert = None
            if seed.get("fleet"):
                try:
                    cert = base64.b64decode(seed["fleet"]["certificate"], validate=True)
                except ValueError:
                    raise SeedError(f"{seed_path}: fleet.certificate is not base64") from None
                public_key_of(seed["fleet"]["key"])      # a malformed fleet key stops here; the agent checks the
                # certificate against this node's id when it starts (and says why it refuses to join the fleet)
            if identity is None:
                identity = Identity.generate()
                save_identity(data, identity)
            if cert is not None:
                write_atomic("fleet.cert", cert, dir_fd=data)
            if seed.get("claim"):
                claim = seed["claim"]
                save_claim(data_dir, claim["token"], claim["url"], claim["fleet"], claim["pin"], dir_fd=data)
            net = seed.get("network", {})
            if net.get("wifi_ssid"):
                write_wifi(data, wpa_supplicant_conf(net["wifi_ssid"], net.get("wifi_psk", ""),
                                                      net.get("wifi_country", "")))
            update_toml(CONFIG_NAME, settings, dir_fd=data, comment="from the first-boot seed")
            if seed:
                kept = {s: {k: v for k, v in vals.items() if (s, k) not in SECRETS} for s, vals in seed.items()}
                clean = "# applied at first boot; secrets removed\n" + render_seed(kept)
                write_atomic(SEED_APPLIED, clean.encode(), 0o600, dir_fd=data)
        if clean is not None:
            scrub_seed(seed_path, clean)
        # the data directory's own marker (edge/datadir.py: no command opens a store without it), the service's
        write_atomic(DATA_MARKER, MARKER_TEXT, dir_fd=data)
        if user:
            pw = pwd.getpwnam(user)
            _chown_tree(data_dir, pw.pw_uid, pw.pw_gid)
        write_atomic(MARKER, (identity.node_id + "\n").encode(), dir_fd=data)
    finally:
        os.close(data)
    net = seed.get("network", {})
    secrets_removed = [f"{s}.{k}" for s, vals in seed.items() for k in vals if (s, k) in SECRETS]
    result = {"node": identity.node_id, "seed": bool(seed), "settings": sorted(settings),
              "secrets_removed": secrets_removed, "wifi": net.get("wifi_ssid") or None}
    if seed.get("claim"):
        log(f"hearth: fleet claim kept for enrollment at {seed['claim']['url']} (hearth-enroll.service)")
    if net.get("wifi_ssid"):
        log(f"hearth: Wi-Fi network {net['wifi_ssid']!r} configured (hearth-wifi.service joins it)")
    log(f"hearth: first boot done: node {identity.node_id}; seed "
        + (f"applied ({', '.join(sorted(settings)) or 'no settings'}; secrets removed: "
           f"{', '.join(secrets_removed) or 'none'})" if seed else "absent"))
    return result

