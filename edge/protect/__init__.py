"""Protected pins, the pure core (no network, no agent): Merkle trees over pieces (`merkle.py`), storage audits
(`audit.py`), segments of a DAG and their erasure pieces (`segments.py`), the signed manifest and the defaults
(`manifest.py`), placement (`placement.py`), reputation (`reputation.py`) and repair planning (`repair.py`).
docs/protection.md states the design and the arithmetic behind the defaults."""
