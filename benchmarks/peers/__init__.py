"""Other serving stacks the benchmarks measure servekit against, over the same models."""
