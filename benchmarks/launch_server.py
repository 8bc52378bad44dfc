"""S-LoRA's entry path, kept: `cd benchmarks && python launch_server.py ...` (or `python -m benchmarks.launch_server`) runs
benchmarks/harness/launch_server.py with the same flags."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not benchmarks/: its families
    # (kernels/, engine/) would shadow packages of those names
    from benchmarks.harness.launch_server import main

    main()
