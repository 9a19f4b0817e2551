"""Protected pins over the network: the owner's side (`owner.py`: spread, audit, renew, release) and a reader's
(`reader.py`: any k pieces of each segment from their holders, decoded and checked). The pure core is
edge/protect; the holder's side is edge/store/pieces.py and edge/transport/pieces.py."""
