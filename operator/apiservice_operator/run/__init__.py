"""The running operator: kopf wiring at the edge (adapter), the supervisor that starts and stops
every task, and memory hygiene. The only floor that imports kopf."""
