"""Model math: params, their init methods, learning-rate schedules and updaters."""
