"""apiservice-operator: probes every aggregated APIService's discovery endpoint and writes
an Available / Degraded verdict into the APIService's status."""

__version__ = "0.1.0"
