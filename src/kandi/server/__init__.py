"""`kandi serve`: the HTTP API, the AUTOMATIC1111-compatible subset and the web UI over one job queue."""
