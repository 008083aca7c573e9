"""HTTP edge: the app factory, middlewares, and one module per API."""
