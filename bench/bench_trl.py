"""TRL GKD benchmark; see sleepcore/benchmarks/trl_gkd.py. Usage: python bench/bench_trl.py --case cpu"""

from sleepcore.benchmarks.trl_gkd import main

if __name__ == "__main__":
    main()
