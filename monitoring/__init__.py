"""Everything that observes servekit: Prometheus metrics and collectors."""
