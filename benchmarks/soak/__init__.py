"""A soak with chaos: the CPU demo at ~80% of its capacity for N minutes while parts of it are killed."""
