"""The benchmark's stages and measuring tools, run by bench/bench_relvit.py (see its docstring)."""
