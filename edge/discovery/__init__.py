"""Neighbours on the LAN: mDNS announce and browse (zeroconf), the peer table, probes and scores."""

from edge.discovery.peers import PeerInfo, PeerTable

__all__ = ["PeerInfo", "PeerTable"]
