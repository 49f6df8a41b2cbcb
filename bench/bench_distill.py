"""Fused distillation benchmark; see sleepcore/benchmarks/distill.py. Usage: python bench/bench_distill.py --case cpu"""

from sleepcore.benchmarks.distill import main

if __name__ == "__main__":
    main()
