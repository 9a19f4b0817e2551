"""What runs on a build or fleet host: flashing images and making signed update bundles."""
