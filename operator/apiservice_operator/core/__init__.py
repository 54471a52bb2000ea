"""The pure core: plain data in, plain data out (resolve, decide, the user's path, blast radius,
certificates, silence, selectors, settings, the retry policy). It imports nothing from the other
floors, nor kopf, a Kubernetes client or an HTTP library, and reads no clock."""
