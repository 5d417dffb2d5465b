"""The request path: record encoding and validation, feature-vector assembly, text tokenization and the predictor that ties them together."""
