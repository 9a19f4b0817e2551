"""What runs on the device: first boot, and signed A/B updates applied, committed and rolled back."""
