"""What runs on the device: first boot, the data partition, Wi-Fi, the enrollment claim, and signed A/B updates
applied, committed and rolled back."""
