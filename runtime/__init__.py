"""singa's runtime: everything that runs a job, grouped by SINGA's roles --
config/ (job.conf), neuralnet/ (layers, nets), model/ (params, updaters),
train/ (workers and their algorithms, a job's process), ps/ (servers, stubs),
comm/ (messages, sockets), jobs/ (submit, job master, launchers, job database),
io/ and viz/. docs/architecture.md draws the map."""
