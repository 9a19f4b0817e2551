"""Sans-IO wire formats: bytes in, typed messages out, and back. No sockets here."""

from edge.wire.codec import parse_message, serialize_message
from edge.wire.messages import (MAX_BODY, MAX_GET_MANY, MAX_HAVE, MAX_PROBE, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
                                Block, Blocks, Error, ErrorCode, Get, GetMany, Have, HaveReply, Hello, Probe,
                                ProbeData, Put, PutOk, Welcome, ListStreams, Streams)
from edge.wire.messages import (MAX_PIECE, MAX_PIECE_CHUNK, Audit, AuditProof, GetManifest, GetPiece, LeaseOk,
                                Manifest, Piece, ReleasePiece, RenewLease, StoreOk, StorePiece, Transfer,
                                TransferReceipt)
from edge.wire.messages import Moved

__all__ = ["MAX_BODY", "MAX_GET_MANY", "MAX_HAVE", "MAX_PROBE", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "Block",
           "Blocks", "Error", "ErrorCode", "Get", "GetMany", "Have", "HaveReply", "Hello", "Probe", "ProbeData",
           "Put", "PutOk", "Welcome", "parse_message", "serialize_message", "ListStreams", "Streams", "MAX_PIECE",
           "MAX_PIECE_CHUNK", "Audit", "AuditProof", "GetManifest", "GetPiece", "LeaseOk", "Manifest", "Piece",
           "ReleasePiece", "RenewLease", "StoreOk", "StorePiece", "Transfer", "TransferReceipt", "Moved"]
