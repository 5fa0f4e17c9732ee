"""Index benchmarks over synthetic clustered vectors: speed, recall against exact search, scaling."""
