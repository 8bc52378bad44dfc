"""Virtual Token Counter fair scheduling against FCFS on the paper's workloads (CPU, virtual clock)."""
