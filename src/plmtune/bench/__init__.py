"""Multi-seed benchmarking: suites of recipes and peer baselines over tasks, K and seeds."""
