"""The model registry: versions and their stages, lineage, gate records, and artifacts checked by sha256."""
