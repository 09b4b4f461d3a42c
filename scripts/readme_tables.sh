#!/usr/bin/env bash
# Re-creates exactly the experiments behind the demo tables of README.md and docs/methods.md, runs them, and writes their reports to
# reports/thesis/readme/ (committed: rerun this and diff). About 100 minutes on 2 CPU cores (one experiment at a time).
#
#   scripts/readme_tables.sh            # everything: baseline, tuning on dev, the second seeds, the reports
#   scripts/readme_tables.sh tune       # the baseline and the tuning experiments only
#   scripts/readme_tables.sh seeds      # the second seeds of the chosen settings (after `tune`), then the reports
#   scripts/readme_tables.sh reports    # only the reports, from experiments already in `dvc exp show`
#
# Every experiment starts from the committed baseline (params.yaml) with the -S changes listed here. The methods'
# settings were chosen on the DEV splits from the tuning experiments, never on test. The rule, per method: among its
# settings whose German dev CER is at most fine-tuning's + 0.15, the one with the lowest Dutch dev CER (the least
# forgetting for a bounded loss of German learning). Dev CER is the scored model's: reports/adapt/metrics.json kept.dev
# (the kept checkpoint), or reports/average/metrics.json dev for averaging; the table is
# reports/thesis/readme/tuning_dev.md.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in all|tune|seeds|reports) ;; *) echo "usage: $0 [all|tune|seeds|reports]" >&2; exit 2;; esac

# Settings chosen on dev (docs/methods.md, "How the settings were chosen").
EWC_LAMBDA=0.25      # = params.yaml's default adapt.ewc_lambda
L2_LAMBDA=0.1
MAS_LAMBDA=0.05
LWF_WEIGHT=1
LORA_RANK=8
REPLAY_FRACTION=0.5
AVERAGE_ALPHA=0.75

queue() {  # queue one named experiment (replacing an older one of that name)
  local name=$1; shift
  dvc exp remove "$name" >/dev/null 2>&1 || true
  dvc exp run --queue --name "$name" "$@" >/dev/null
}

run_queue() {  # run everything queued, one at a time (its resources.cpu_threads = 2 threads: 2 cores), and wait
  local status  # (read whole: `grep -q` closing the pipe early would fail the pipeline under pipefail)
  while :; do
    status=$(dvc queue status)  # (not in the loop's condition, where `set -e` would not stop on a failure)
    grep -Eq '\b(Queued|Running)\b' <<<"$status" || break
    # (re)start the workers: a worker that has stopped while experiments wait is started again, a running one is kept
    # (the reproducible mode pins the threads of every stage: two jobs would put four spinning threads on two cores)
    if grep -q '\bQueued\b' <<<"$status"; then dvc queue start --jobs "${JOBS:-1}" >/dev/null; fi
    sleep 20
  done
  if grep -q Failed <<<"$status"; then echo "$status"; echo "an experiment failed" >&2; exit 1; fi
}

if [[ "${1:-all}" == all || "${1:-all}" == tune ]]; then
  dvc repro
  # Tuning, training seed 0, judged on dev. adapt.ewc_lambda=0 is plain fine-tuning (ft).
  for lam in 0 0.1 0.25 1 3; do queue "lam-$lam" -S "adapt.ewc_lambda=$lam"; done
  for lam in 0.05 0.1 0.25 1; do queue "tune-l2-$lam" -S adapt.method=l2 -S "adapt.ewc_lambda=$lam"; done
  for lam in 0.05 0.1 0.25 1; do queue "tune-mas-$lam" -S adapt.method=mas -S "adapt.ewc_lambda=$lam"; done
  for weight in 1 3; do queue "tune-lwf-$weight" -S adapt.method=lwf -S "adapt.kd_weight=$weight"; done
  for rank in 2 8; do queue "tune-lora-$rank" -S adapt.method=lora -S "adapt.lora.rank=$rank" -S "adapt.lora.alpha=$((2 * rank))"; done
  for fraction in 0.125 0.25 0.5; do queue "tune-replay-$fraction" -S adapt.ewc_lambda=0 -S "adapt.replay_fraction=$fraction"; done
  for alpha in 0.25 0.5 0.75; do queue "tune-average-$alpha" -S adapt.ewc_lambda=0 -S "average.alpha=$alpha"; done
  run_queue
fi

if [[ "${1:-all}" == all || "${1:-all}" == seeds ]]; then
  # The second training seed of every chosen setting (seed 0 is its tuning experiment).
  queue ft-s1 -S adapt.seed=1 -S adapt.ewc_lambda=0
  queue ewc-s1 -S adapt.seed=1 -S "adapt.ewc_lambda=$EWC_LAMBDA"
  queue l2-s1 -S adapt.seed=1 -S adapt.method=l2 -S "adapt.ewc_lambda=$L2_LAMBDA"
  queue mas-s1 -S adapt.seed=1 -S adapt.method=mas -S "adapt.ewc_lambda=$MAS_LAMBDA"
  queue lwf-s1 -S adapt.seed=1 -S adapt.method=lwf -S "adapt.kd_weight=$LWF_WEIGHT"
  queue lora-s1 -S adapt.seed=1 -S adapt.method=lora -S "adapt.lora.rank=$LORA_RANK" -S "adapt.lora.alpha=$((2 * LORA_RANK))"
  queue replay-s1 -S adapt.seed=1 -S adapt.ewc_lambda=0 -S "adapt.replay_fraction=$REPLAY_FRACTION"
  queue average-s1 -S adapt.seed=1 -S adapt.ewc_lambda=0 -S "average.alpha=$AVERAGE_ALPHA"
  run_queue
fi

if [[ "${1:-all}" != tune ]]; then
  out=reports/thesis/readme
  mkdir -p "$out"
  dvc exp show --md --drop '.*' --keep 'Experiment|adapt\.(method|ewc_lambda|kd_weight|replay_fraction|lora\.rank)|average\.alpha|reports/adapt/metrics\.json:kept\.(step|dev\.nl\.cer)|kept\.dev\.de\.cer|dev\.(nl|de)\.cer' \
    > "$out/tuning_dev.md"
  python -m stages.report --out "$out/lambda" --exp lam-0 lam-0.1 lam-0.25 lam-1 lam-3 --baseline lam-0
  ft=lam-0; ewc="lam-$EWC_LAMBDA"
  python -m stages.report --out "$out/methods" --baseline "$ft" \
    --exp "$ft" ft-s1 "$ewc" ewc-s1 "tune-l2-$L2_LAMBDA" l2-s1 "tune-mas-$MAS_LAMBDA" mas-s1 "tune-lwf-$LWF_WEIGHT" lwf-s1 \
      "tune-lora-$LORA_RANK" lora-s1 "tune-replay-$REPLAY_FRACTION" replay-s1 "tune-average-$AVERAGE_ALPHA" average-s1 \
    --compare "tune-l2-$L2_LAMBDA=$ewc" --compare "tune-mas-$MAS_LAMBDA=$ewc" --compare "tune-lwf-$LWF_WEIGHT=$ewc" \
    --compare "tune-lora-$LORA_RANK=$ewc" --compare "tune-replay-$REPLAY_FRACTION=$ewc" --compare "tune-average-$AVERAGE_ALPHA=$ewc"
fi
