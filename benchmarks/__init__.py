"""Benchmarks: the engine benchmark (engine_bench) and its workload, roofline, baseline and report modules."""
