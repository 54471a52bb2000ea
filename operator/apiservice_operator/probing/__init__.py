"""HTTP and TLS I/O towards aggregated servers and kube-apiserver's instances: the prober, its
connection pool, the path checker. Imports the core only."""
