"""Running jobs: the job master (rendezvous, start barrier, stop) and the
launchers that start a job's processes."""
