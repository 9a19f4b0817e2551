"""Media: probe, the ABR ladder, HLS/CMAF packaging, live ingest (PyAV)."""
