"""Training-step throughput on this CPU by precision and memory layout: what `train.precision: auto` and
`train.channels_last: auto` choose (bf16-mixed + channels_last on CPUs with AMX or AVX512-BF16, tasks/train.py
`cpu_has_fast_bf16`) against 32-true in contiguous layout, the baseline, in the same run.

One training step = bench.common.plain_training_steps (forward under torch.autocast in the bf16 arms,
label-smoothed cross-entropy, backward, AdamW), on random 28×28 grey batches (Fashion-MNIST's shape) and
the built-in networks. Rates are images/s over `--steps` steps after `--warmup`; arms alternate per repeat so machine load falls on all.

    python -m bench.cpu_precision [--steps 10] [--repeats 2] [--batch 128]
    python -m bench.cpu_precision --quick      # resnet_tiny, batch 16, 2 steps: a smoke run

Writes bench/results/cpu_precision.json (--out) and prints a Markdown table."""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import plain_training_steps, ratio, table, write_result

ARMS = (("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True))


def arm_name(precision: str, channels_last: bool) -> str:
    return f"{precision} cl={channels_last}"


def images_per_second(network: str, precision: str, channels_last: bool, batch: int, steps: int, warmup: int) -> float:
    """Steady-state rate of bench.common's plain training loop on one random batch, fed again every step."""
    import torch

    from models.networks import build_network

    torch.manual_seed(0)
    model = build_network(network, num_classes=10, in_chans=1)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    amp_dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    start = time.perf_counter()
    for step in plain_training_steps(
        model, [(x, y)], optimizer, 0.1, warmup + steps, amp_dtype=amp_dtype, channels_last=channels_last
    ):
        if step == warmup:
            start = time.perf_counter()
    return batch * steps / (time.perf_counter() - start)


def measure(networks: list[str], batch: int, steps: int, warmup: int, repeats: int) -> dict:
    from tasks.train import Params, cpu_feature, cpu_has_fast_bf16, device_settings

    _, auto_precision, auto_channels_last = device_settings(Params(accelerator="cpu"))
    rates: dict[str, dict[str, list[float]]] = {n: {arm_name(*arm): [] for arm in ARMS} for n in networks}
    for _ in range(repeats):
        for network in networks:
            for precision, channels_last in ARMS:
                rate = images_per_second(network, precision, channels_last, batch, steps, warmup)
                rates[network][arm_name(precision, channels_last)].append(rate)
    baseline = arm_name("32-true", False)
    summary = {
        network: {
            arm: {"images_per_s": float(np.median(r)), "vs_32_true": ratio(np.median(r), np.median(arms[baseline]))}
            for arm, r in arms.items()
        }
        for network, arms in rates.items()
    }
    return {
        "amx": cpu_feature("_is_amx_tile_supported"),
        "avx512_bf16": cpu_feature("_is_avx512_bf16_supported"),
        "fast_bf16": cpu_has_fast_bf16(),
        "auto": {"precision": auto_precision, "channels_last": auto_channels_last},
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "rates": rates,
        "summary": summary,
    }


def report(result: dict) -> str:
    rows = [
        [network, arm, round(cell["images_per_s"]), cell["vs_32_true"]]
        for network, arms in result["summary"].items()
        for arm, cell in arms.items()
    ]
    head = (
        f"AMX: {result['amx']}, AVX512-BF16: {result['avx512_bf16']}; auto resolves to "
        f"{result['auto']['precision']}, channels_last {result['auto']['channels_last']}; batch {result['batch']}, {result['steps']} steps x {result['repeats']}\n\n"
    )
    return head + table(["network", "arm", "images/s", "vs 32-true"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["resnet_tiny", "resnet_small"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/cpu_precision.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.networks, args.batch, args.steps, args.warmup, args.repeats = ["resnet_tiny"], 16, 2, 1, 1
    result = measure(args.networks, args.batch, args.steps, args.warmup, args.repeats)
    write_result(result, args.out)
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
