"""Training throughput on this machine (issue 9): images/s of training steps (forward, backward, AdamW)
per architecture and input size, fp32 against bf16 autocast, contiguous against channels-last.

Measured on random tensors of the right shape (the data pipeline is cached and not the bottleneck
after the first epoch), batch 32, after warm-up steps; every variant of one model in one run, so the
ratios are comparable.

    python benchmarks/train_speed.py [--models resnet10t efficientnet_b0 tf_efficientnet_lite0] [--sizes 96 128 224]

Results: a Markdown table on stdout and ``runs/train_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from liverscope.models import build_model
from liverscope.utils import atomic_write_json, cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]


def steps_per_second(
    name: str, size: int, bf16: bool, channels_last: bool, batch: int, steps: int, warmup: int
) -> float:
    torch.manual_seed(0)
    model = build_model(name, 5, head="linear").train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 5, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet10t", "efficientnet_b0", "tf_efficientnet_lite0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 128, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "train_speed.json")
    args = ap.parse_args()
    variants = [
        ("fp32", False, False),
        ("fp32 channels-last", False, True),
        ("bf16 autocast", True, False),
        ("bf16 channels-last", True, True),
    ]
    rows = []
    print(
        f"CPU: {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "\n| model | px | "
        + " | ".join(v[0] for v in variants)
        + " |\n| --- | ---: | "
        + " | ".join("---:" for _ in variants)
        + " |"
    )
    for name in args.models:
        for size in args.sizes:
            r = {"model": name, "size": size}
            for label, bf16, cl in variants:
                r[label] = round(
                    steps_per_second(name, size, bf16, cl, args.batch, args.steps, args.warmup), 1
                )
            rows.append(r)
            print(f"| {name} | {size} | " + " | ".join(f"{r[v[0]]:.1f}" for v in variants) + " |", flush=True)
    atomic_write_json(
        args.out,
        {
            "command": "python benchmarks/train_speed.py "
            + " ".join(
                f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if k != "out"
            ),
            "native_bf16": cpu_has_native_bf16(),
            "rows": rows,
        },
    )
    print(json.dumps(rows[:1]))


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()
