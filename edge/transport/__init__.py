"""Node-to-node transport: ZeroMQ driven from Trio, CURVE-encrypted, speaking edge.wire messages."""
