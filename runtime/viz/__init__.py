"""Pictures of jobs and what they learned. Among them: `png` writes PNG
files with zlib and struct only, and `filters` draws a weight matrix as a
grid of tiles (`python -m runtime.viz.filters CHECKPOINT --param w1 -o
filters.png`). Each module's docstring states its own contract."""
