"""Training: the worker and its algorithms (BP, BPTT, CD), a job's process (node) and the in-process run."""
