"""Policy-loss benchmark; see sleepcore/benchmarks/policy.py. Usage: python bench/bench_policy.py --case cpu"""

from sleepcore.benchmarks.policy import main

if __name__ == "__main__":
    main()
