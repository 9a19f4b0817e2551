"""Provisioning: turning an image into a household's node and keeping it updated, apart by where it runs
(device/ and host/), on the contracts both sides keep (the seed, the A/B slots, the update bundle)."""
