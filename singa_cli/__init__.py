"""The `singa` command line: one module per verb, gathered in `main`."""
