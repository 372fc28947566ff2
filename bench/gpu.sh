#!/usr/bin/env bash
# Benchmarks 1-3 on a CUDA machine (BENCHMARKS.md, "GPU"): the train stage's `auto` rule gives
# bf16-mixed and channels_last there, and the hand-written loops of the benchmarks use the same.
#
#   bash bench/gpu.sh OUTDIR loops      # loop overhead + data path on one 20k Fashion-MNIST store
#   bash bench/gpu.sh OUTDIR accuracy   # the whole pipeline on Fashion-MNIST (official test set), then digits
#
# Needs the project's packages importable (e.g. `make setup` and `PATH=.venv/bin:$PATH`) and the
# Fashion-MNIST idx files (Debian's dataset-fashion-mnist, or IMGCLS_FASHION_MNIST_DIR).
set -uo pipefail
out=${1:?OUTDIR}; part=${2:?loops or accuracy}
mkdir -p "$out"
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
export PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:////tmp/gpu_bench_mlflow.db}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

case $part in
loops)
    store=$(python3 -c "from pathlib import Path; from bench.common import build_prepared
print(build_prepared(Path('/tmp/gpu_bench_store'), 20000, workers=$workers))" | tail -1)
    python3 -m bench.loop_overhead --accelerator gpu --prepared "$store" --steps 100 --warmup 20 --repeats 2 \
        --num-workers "$workers" --threads 0 --out "$out/loop_overhead_gpu.json"
    # the same again under cProfile, one run each: where the Lightning loop spends its extra time
    python3 -m bench.loop_overhead --accelerator gpu --prepared "$store" --steps 100 --warmup 20 --repeats 1 \
        --num-workers "$workers" --threads 0 --profile "$out/profile" --out /tmp/loop_overhead_profiled.json >/dev/null
    python3 -m bench.data_path --accelerator gpu --prepared "$store" --batches 100 --steps 50 \
        --num-workers "$workers" --threads 0 --out "$out/data_path_gpu.json"
    ;;
accuracy)
    # params.yaml's network (resnet_small); 25 epochs take ~2.5 min on an H100, the budget is a guard
    python3 -m bench.accuracy --dataset fashion --epochs 25 --budget-minutes 5 \
        --set "clean.workers=$workers" --set "augment.workers=$workers" --set "train.num_workers=$workers" \
        --out "$out/accuracy_fashion_gpu.json"
    python3 -m bench.accuracy --dataset digits --set "train.num_workers=$workers" --out "$out/accuracy_digits_gpu.json"
    ;;
*) echo "unknown part: $part (loops | accuracy)"; exit 2 ;;
esac
