"""S-LoRA's entry path, kept: `cd benchmarks && python plot_exp.py ...` (or `python -m benchmarks.plot_exp`) runs
benchmarks/harness/plot_exp.py with the same flags."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not benchmarks/: its families
    # (kernels/, engine/) would shadow packages of those names
    from benchmarks.harness.plot_exp import main

    main()
