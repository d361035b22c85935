"""The HTTP layer over the etl library: routes, schemas, auth, errors and Prometheus metrics."""
