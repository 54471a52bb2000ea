"""The Kubernetes API: credentials, status writes, Events, the Lease, the probe identity's tokens,
permission checks, the resync that catches missed deletions, cleanup. Imports the core (and the
connection pool of probing/)."""
