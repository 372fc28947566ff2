#!/usr/bin/env bash
# Benchmarks 1-3 on a CUDA machine (BENCHMARKS.md, "GPU"): the train stage's `auto` rule gives
# bf16-mixed and channels_last there, and the hand-written loops of the benchmarks use the same.
#
#   bash bench/gpu.sh OUTDIR loops      # loop overhead + data path on one 20k Fashion-MNIST store
#   bash bench/gpu.sh OUTDIR accuracy   # the whole pipeline on Fashion-MNIST (official test set), then digits
#   bash bench/gpu.sh OUTDIR fashion60  # train + evaluate on all of Fashion-MNIST in 60 s of training at the GPU
#                                       # default batch (auto = 512), resnet_wide and resnet_small, then the
#                                       # loop ratio at 512 for both
#   bash bench/gpu.sh OUTDIR loader     # OpenCV threads in the loader workers, then fashion60 again with one
#   bash bench/gpu.sh OUTDIR lightning512  # the loop pair at 512 with CUDA's sync probe, then under cProfile
#
# Needs the project's packages importable (e.g. `make setup` and `PATH=.venv/bin:$PATH`) and the
# Fashion-MNIST idx files (Debian's dataset-fashion-mnist, or IMGCLS_FASHION_MNIST_DIR). On a lent machine
# whose image has torch but not the rest: `python -m bench.device_wheels --have NAMES.txt` here (25 MB of
# wheels into .whl), carry .whl and the idx files, and there start with
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD
# The device tool brings back at most 8 files: for several parts in one call, give each its own OUTDIR
# under /tmp and `tar czf "$OUT/gpu.tgz" -C /tmp DIRS` at the end.
set -uo pipefail
out=${1:?OUTDIR}; part=${2:?loops or accuracy}
mkdir -p "$out"
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:////tmp/gpu_bench_mlflow.db}
# one line of a result file, for the command's output: summary FILE "PYTHON-EXPR-AFTER-d"
summary() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(d$2)" "$1" 2>&1 | cut -c1-600; }
# Fashion-MNIST through the train + evaluate stages in 60 s of training (epochs 40: train.fit_schedule_to_time
# picks the epochs that fit and ends the LR schedule with them; batch_size auto = 512, lr 0.006 on this
# 54k-row train split), bounded so one slow step cannot eat the others' device time: fashion_60s NETWORK TAG
fashion_60s() {
    rm -rf /tmp/gpu_fashion/train /tmp/gpu_fashion/reports
    timeout 150 python3 -m bench.gpu_fashion --root /tmp/gpu_fashion --budget-seconds 60 \
        --set train.network=$1 --set train.epochs=40 --set train.num_workers=$workers \
        --out "$out/gpu_fashion_$2.json" > "$out/gpu_fashion_$2.log" 2>&1
    echo "fashion $1 rc=$?"; summary "$out/gpu_fashion_$2.json" "['train']['epochs'], d['train']['seconds'], d['train']['seconds_per_epoch'], d['evaluate']['metrics']['test/acc'], d['evaluate']['metrics']['test/ece']"
}
# the Lightning / plain loop pair at batch 512 on the Fashion store: loop_512 SECONDS TAG ARGS...
loop_512() {
    local seconds=$1 tag=$2; shift 2
    timeout "$seconds" python3 -m bench.loop_overhead --accelerator gpu --prepared /tmp/gpu_fashion/prepared \
        --batch-size 512 --steps 100 --warmup 15 --num-workers "$workers" --threads 0 "$@" \
        --out "$out/loop_overhead_gpu_b512_$tag.json" > "$out/loop_overhead_b512_$tag.log" 2>&1
    echo "loop b512 $tag rc=$?"; summary "$out/loop_overhead_gpu_b512_$tag.json" "['ratio'], d['pair_ratios'], d['lightning']['images_per_s'], d['plain']['images_per_s']"
}
# the store fashion_60s writes, for the parts that start with a loop
fashion_store() {
    [ -d /tmp/gpu_fashion/prepared ] || python3 -c "from pathlib import Path; from bench.gpu_fashion import write_store
write_store(Path('/tmp/gpu_fashion'))"
}
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
fashion60)
    for network in resnet_wide resnet_small; do fashion_60s $network $network; done
    for network in resnet_small resnet_wide; do loop_512 110 $network --repeats 3 --network $network; done
    ;;
loader)
    # OpenCV's threads in the loader workers (default pool vs one), then Fashion in 60 s with one
    # (models/data.py's default now) for both networks, then the loop ratio at 512
    fashion_store
    timeout 90 python3 -m bench.loader_threads --prepared /tmp/gpu_fashion/prepared --num-workers "$workers" \
        --batch-size 512 --batches 60 --repeats 3 --out "$out/loader_threads_gpu.json" > "$out/loader_threads_gpu.log" 2>&1
    echo "loader threads rc=$?"; summary "$out/loader_threads_gpu.json" "['median_images_per_s'], d['one_thread_over_default']"
    for network in resnet_small resnet_wide; do fashion_60s $network ${network}_cv1; done
    loop_512 80 cv1 --repeats 3 --network resnet_small
    ;;
lightning512)
    # why the Lightning step is slower than the plain one at batch 512 once the loader keeps up (0.654 on
    # 2026-11-30): one pair with CUDA's sync debug mode (syncs per source line), one pair under cProfile
    fashion_store
    loop_512 100 syncs --repeats 1 --sync-probe; summary "$out/loop_overhead_gpu_b512_syncs.json" "['runs']"
    loop_512 100 profiled --repeats 1 --profile "$out/profile"
    ;;
*) echo "unknown part: $part (loops | accuracy | fashion60 | loader | lightning512)"; exit 2 ;;
esac
