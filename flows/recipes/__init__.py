"""Build recipes the flows and `make` run: the synthetic transaction data, the demo models and the text model."""
