"""Provisioning: units, first boot, flashing, seeds and signed A/B updates, device side and host side apart."""
