"""The fleet: a fleet key certifies the nodes that may talk to each other (certificates, delegations to an
enrollment key, revocation lists), and enrollment gives a device whose identity is born on the device its
certificate: the protocol's messages (requests), the pinned TLS both ends speak (tls), the server's records and
answers (claims), the enrollment server (server), and renewal as an agent service (renewal). The device's own
claim is a step of provisioning (provisioning/device/claim.py)."""
