"""The engine as a service: FastAPI app, micro-batching, the web page, and the `jsar query --server` client."""
