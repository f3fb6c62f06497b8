"""A finished bench folder written by hand, with everything a real run's result.json holds that the
report reads: test metrics, dev_history per epoch, metrics.jsonl, versions, machine, git, peer."""

from __future__ import annotations

import json

# method → per-seed test accuracy; mcc and macro-F1 are derived so that they rank differently
ACCURACY = {"vanilla": [0.60, 0.70, 0.66], "llrd": [0.65, 0.80, 0.70], "majority": [0.52, 0.52, 0.52]}
SEEDS = (13, 21, 42)
H100 = {"platform": "Linux-5.15-x86_64", "processor": "x86_64", "cpu_model": "Intel Xeon Platinum 8480+",
        "cpus": 208, "torch_threads": 26, "cuda": True, "gpu": "NVIDIA H100 80GB HBM3"}
VERSIONS = {"python": "3.11.7", "plmtune": "0.1.0", "torch": "2.13.0+cu128"}


def mcc_of(method: str, seed_index: int) -> float:
    """MCC: llrd is worse than vanilla on it (the reverse of accuracy), the majority class has 0."""
    return {"vanilla": 0.30, "llrd": 0.20, "majority": 0.0}.get(method, 0.25) + 0.01 * seed_index


def write_bench(out, tasks=("toy",), accuracy=None, seeds=SEEDS, machine=None, epochs=3):
    accuracy = accuracy or ACCURACY
    methods = list(accuracy)
    for task in tasks:
        for method, accs in accuracy.items():
            for i, (seed, acc) in enumerate(zip(seeds, accs)):
                d = out / "runs" / task / "k8" / method / f"seed-{seed}"
                d.mkdir(parents=True)
                (d / "bench.json").write_text(json.dumps({"method": method, "task": task, "k": 8, "seed": seed,
                                                          "status": "ok", "seconds": 4.0 + i}))
                peer = method == "majority"
                history = [] if peer else [{"epoch": e, "step": 4 * e, "accuracy": acc - 0.1 / e,
                                            "macro_f1": acc - 0.12 / e, "mcc": mcc_of(method, i) - 0.1 / e}
                                           for e in range(1, epochs + 1)]
                result = {"status": "ok", "task": task, "seed": seed,
                          "test": {"accuracy": acc, "macro_f1": acc - 0.05, "mcc": mcc_of(method, i)},
                          "dev_history": history, "train_seconds": 30.0 if method == "llrd" else 3.0,
                          "eval_seconds": 1.0, "parameters": {"trainable": 5}, "versions": VERSIONS,
                          "machine": machine or H100, "git": {"commit": "abc123", "dirty": False}}
                if peer:
                    result["peer"] = "majority"
                (d / "result.json").write_text(json.dumps(result))
                if not peer:
                    (d / "metrics.jsonl").write_text("".join(
                        json.dumps({"type": "train", "step": s, "loss": 1.0 / s + i}) + "\n" for s in range(1, 9)))
    (out / "suite.json").write_text(json.dumps({"name": "toy", "baseline": "vanilla", "seeds": list(seeds),
                                                "methods": methods, "tasks": list(tasks), "k": [8]}))
    return out
