"""Rollout benchmark; see sleepcore/benchmarks/rollout.py. Usage: python bench/bench_rollout.py --case cpu"""

from sleepcore.benchmarks.rollout import main

if __name__ == "__main__":
    main()
