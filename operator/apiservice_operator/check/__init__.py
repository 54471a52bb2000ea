"""The check loop: one pipeline from inputs to verdict (pipeline), the controller that runs it on a
schedule and writes what changed, and the named parts of its state. Imports the core and probing/,
never kopf nor a Kubernetes client: writes and Events are injected."""
