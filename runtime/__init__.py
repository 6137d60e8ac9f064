"""singa's runtime: everything that runs a job (config, net, algorithms,
updaters, params, io, and later the worker/server/stub roles)."""
