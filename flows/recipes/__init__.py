"""Build recipes the flows and `make` run: the synthetic transaction data, the demo's batch
feature views, the demo models, the text model and generated MLPs."""
