"""What runs on a build or fleet host: seeds, fleet provisioning, flashing images, signed update bundles."""
