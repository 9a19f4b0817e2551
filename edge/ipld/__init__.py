"""The content formats, as pure functions with no I/O: varint, multibase, multihash and CIDs, DAG-CBOR,
DAG-PB and its protobuf, UnixFS, HAMT directories and CAR files. Nothing here touches the disk, SQLite or the
network, so the wire formats and the fleet's certificates can use them without loading the block store."""
