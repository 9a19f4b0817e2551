"""A block corrupt on this node is replaced from a neighbour (real agents on loopback): the gateway answers with
the good bytes, and 502 only when no neighbour holds a good copy (issue 14: the chaos test saw 502s for blocks a
neighbour held)."""

import os

from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port
from tests.gateway.test_neighbours import fetch


def blocks(node: Node) -> set[str]:
    root = os.path.join(node.data_dir, "blocks")
    return {name for sub in os.listdir(root) for name in os.listdir(os.path.join(root, sub))}


def block_path(node: Node, name: str) -> str:
    from edge.ipld.cid import parse_cid
    return os.path.join(node.data_dir, "blocks", parse_cid(name).digest[:1].hex(), name)


def flip(path: str) -> None:
    with open(path, "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_block_is_fetched_from_a_neighbour_and_served(tmp_path):
    base = {"HEARTH_MDNS": "false"}
    a = Node(None, str(tmp_path / "a"), base)
    gateway = free_port()
    b = Node(None, str(tmp_path / "b"), {**base, "HEARTH_GATEWAY_PORT": str(gateway)})
    shared, own = os.urandom(2 << 20), os.urandom(1 << 20)
    (tmp_path / "shared").write_bytes(shared)
    (tmp_path / "own").write_bytes(own)
    a.hearth("add", "-q", str(tmp_path / "shared"))
    scid = b.hearth("add", "-q", str(tmp_path / "shared")).strip()
    before = blocks(b)
    ocid = b.hearth("add", "-q", str(tmp_path / "own")).strip()   # on b only: no good copy anywhere else
    # a leaf of each, and the root of the shared file too (a corrupt root: the listing itself comes from a)
    shared_leaf = sorted(before - {scid})[3]
    own_leaf = sorted(blocks(b) - before - {ocid})[1]
    for name in (shared_leaf, own_leaf, scid):
        flip(block_path(b, name))
    pa = free_port()
    a.start("--port", str(pa), "--metrics-port", "0")
    b.start("--port", str(free_port()), "--metrics-port", "0", "--peer", f"{a.node_id}@127.0.0.1:{pa}")
    try:
        status, _, body, whole = fetch(gateway, f"/ipfs/{scid}")
        assert status == 200 and whole and body == shared, (status, body[:200])
        status, _, body, _ = fetch(gateway, f"/ipfs/{ocid}")
        # the corrupt leaf comes after the first bytes were sent: the body is cut short, never a wrong byte
        assert status == 502 and b"corrupt" in body or status == 200 and body == own[:len(body)] != own, \
            (status, body[:200])
        print(f"\nown file with a corrupt leaf and no other copy: {status}, {len(body)} bytes")
        status, _, body, whole = fetch(gateway, f"/ipfs/{ocid}")   # the leaf is gone here and nowhere else
        assert status in (404, 502) or status == 200 and not whole and body == own[:len(body)], (status, body[:200])
        print(f"asked again: {status}, {len(body)} bytes")
        # b holds good copies of the shared file now (verify lists only the own file's lost leaf as missing)
        print(b.run("store", "verify").stdout)
        status, _, body, _ = fetch(gateway, f"/ipfs/{scid}", {"Range": "bytes=0-"})
        assert status == 206 and body == shared
        logs = b.logs()
        assert "corrupt" in logs and "fetching a good copy from neighbours" in logs
        assert a.proc.poll() is None and b.proc.poll() is None
    finally:
        a.stop()
        b.stop()
