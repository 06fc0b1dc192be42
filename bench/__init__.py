"""Side-by-side benchmarks of cos against the bare tools: `python -m bench.run`."""
