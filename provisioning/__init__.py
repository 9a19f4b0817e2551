"""Provisioning: turning an image into a household's node, apart by where it runs (device/ and host/)."""
