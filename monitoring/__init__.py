"""Everything that observes servekit: Prometheus metrics and collectors, and drift reports
of live traffic against each model version's reference sample."""
