"""The model registry (versions, metadata, stages) and the artifact stores behind it (local folder, S3, BentoML's model store)."""
