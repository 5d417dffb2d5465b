"""The request path: input schemas and record validation, the catalog of served versions, feature-vector assembly, text tokenization and the predictor that ties them together."""
