"""servekit: model serving on BentoML with adaptive batching, Redis cache and features, rollouts."""

__version__ = "0.1.0"
