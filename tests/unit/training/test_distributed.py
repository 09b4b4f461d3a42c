"""More than one process on the CPU: 2 real processes started by torchrun (gloo) against 1 process, on real clips.

One torchrun launch (`tests/ddp/worker.py`) runs every 2-process case: adapt steps with EWC through
`forgetting.training.trainer.train_ctc`, LayerDrop, a huge and a zero λ, and the importance stage for the empirical Fisher, the
sampled Fisher and MAS. The 1-process references run the same functions in this process. Checked: each step's
utterances are those 1 process takes, 2 processes x batch b take the optimiser step of 1 process x batch 2b (gradient
accumulation 1 and 2; with LayerDrop too), the processes hold the same weights, a huge λ holds the weights at θ*, the
sharded importance equals the unsharded one, and only process 0 writes the outputs.
"""

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from forgetting.data.audio import TARGET_SR
from forgetting.data.corpus import write_split_tsv
from forgetting.methods.importance import load_importance
from forgetting.training.batching import LengthGroupedEpochSampler
from forgetting.training.distributed import DeviceError, check_one_gpu_per_process
from forgetting.training.model import save_model
from tests.ddp.worker import PARAMS, AdaptRun, CorpusFiles, adapt, initial_model, run_importance_stage
from tests.e2e.micro import set_key
from tests.unit.tiny import assert_same_fisher

ROOT = Path(__file__).resolve().parents[3]
PROCESSES = 2
ADAM_EPS = 1e-8  # TrainingArguments.adam_epsilon: AdamW's first step is lr·g/(|g| + ε)
LR = 1e-3
# name -> (per process batch, effective batch, the run's other settings), for 2 processes; the 1-process references
# take PROCESSES x the batch, the same effective batch. The EWC steps start off θ*, so the penalty's gradient counts.
EWC = dict(lam=10.0, offset=0.01, lr=LR)
TWO = {
    "ewc_accumulation_1": (2, 4, EWC),
    "ewc_accumulation_2": (2, 8, EWC),
    "layerdrop": (2, 4, dict(lam=0.0, max_steps=2, layerdrop=0.5, lr=LR)),  # λ 0: a dropped layer gets no gradient
    "huge_lambda": (2, 4, dict(lam=1e4, max_steps=3, lr=LR)),
    "zero_lambda": (2, 4, dict(lam=0.0, max_steps=3, lr=LR)),
}
ONE = ("ewc_accumulation_1", "ewc_accumulation_2", "layerdrop")
# importance params (dotted keys) of each importance case, over the common ones
IMPORTANCE = {"empirical": {"importance.fisher": "empirical"},
              "sampled": {"importance.fisher": "sampled", "importance.draws": 2},
              "mas": {"adapt.method": "mas"}}
IMPORTANCE_COMMON = {"importance.samples": 6, "importance.batch_size": 2, "importance.normalize": "none",
                     "importance.loss": "log_likelihood",
                     # unpinned: the one-process reference runs the stage in pytest's process, which a pin would restart
                     "resources.reproducible_cpu": False, "resources.cpu_threads": None}


def adapt_run(root: Path, name: str, processes: int) -> AdaptRun:
    batch, effective, settings = TWO[name]
    return AdaptRun(root=str(root / name), batch_size=batch * PROCESSES // processes, effective_batch_size=effective,
                    **settings)


@pytest.fixture(scope="module")
def files(corpus, tmp_path_factory) -> tuple[Path, CorpusFiles, Path]:
    """A folder with the corpus' train (all 12 clips: a step of 8 is not a whole epoch) and dev (2 of them) split
    files, the initial tiny model saved as the pretrain stage saves it, and a params.yaml for each importance case
    under `one/` and `two/`."""
    root = tmp_path_factory.mktemp("ddp")
    write_split_tsv(root / "train.tsv", corpus.utterances, extra=("duration_s",))
    write_split_tsv(root / "dev.tsv", corpus.utterances[-2:], extra=("duration_s",))
    corpus_files = CorpusFiles(str(corpus.clips_dir), str(corpus.vocab), str(root / "train.tsv"), str(root / "dev.tsv"))
    model, processor = initial_model(corpus_files, adapt_run(root, "ewc_accumulation_1", 1))
    save_model(model, processor, root / "model")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for case, overrides in IMPORTANCE.items():
        params = copy.deepcopy(raw)
        for key, value in {**IMPORTANCE_COMMON, "data.common_voice.nl.path": str(corpus.clips_dir.parent), **overrides}.items():
            set_key(params, key, value)
        for side in ("one", "two"):
            (root / side / case).mkdir(parents=True)
            (root / side / case / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return root, corpus_files, root / "model"


@pytest.fixture(scope="module")
def two(files) -> Path:
    """Every 2-process case, in one torchrun launch; the folder that holds them."""
    root, corpus_files, model_dir = files
    plan = {"corpus": corpus_files.__dict__, "model": str(model_dir),
            "adapt": [adapt_run(root / "two", name, PROCESSES).__dict__ for name in TWO],
            "importance": [str(root / "two" / case) for case in IMPORTANCE]}
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
               "-m", "tests.ddp.worker", str(root / "plan.json")]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-5000:]}\n{done.stderr[-10000:]}")
    return root / "two"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(files) -> Path:
    """One adapt case on two "machines": two torchrun launches of one process each, meeting through torchrun's c10d
    rendezvous on 127.0.0.1, as docs/gpu.md tells users to run on two nodes; the folder that holds it."""
    root, corpus_files, model_dir = files
    name = "ewc_accumulation_1"
    plan = {"corpus": corpus_files.__dict__, "model": str(model_dir),
            "adapt": [adapt_run(root / "nodes", name, PROCESSES).__dict__], "importance": []}
    (root / "nodes-plan.json").write_text(json.dumps(plan), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--rdzv_id=forgetting-test", "-m", "tests.ddp.worker",
               str(root / "nodes-plan.json")]
    logs = [root / f"node{i}.log" for i in range(2)]
    with contextlib.ExitStack() as files_open:
        nodes = [subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  stdout=files_open.enter_context(log.open("w")), stderr=subprocess.STDOUT) for log in logs]
        codes = [node.wait(timeout=600) for node in nodes]
    if any(codes):
        raise AssertionError("\n".join(f"node {i} ({code}):\n{log.read_text()[-5000:]}"
                                       for i, (code, log) in enumerate(zip(codes, logs, strict=True))))
    return root / "nodes"


@pytest.fixture(scope="module")
def one(files, one_thread) -> Path:
    """The 1-process references, run in this process (one thread, as each torchrun process has); the folder that
    holds them."""
    root, corpus_files, model_dir = files
    for name in ONE:
        adapt(corpus_files, adapt_run(root / "one", name, 1))
    for case in IMPORTANCE:
        run_importance_stage(root / "one" / case, corpus_files, model_dir)
    return root / "one"


def steps(folder: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    """A process's weights before the first step (`0/<name>`) and its gradients of every step (`<step>/<name>`)."""
    return load_file(folder / f"rank{rank}-steps.safetensors")


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    """The same steps and parameters; each step's gradient within `rel` of `a`'s (relative L2 error over all
    parameters), and each tensor within 10·`rel` (float32 rounding of the CTC gradient differs with the batches'
    padding: up to ~5e-6 in a tensor). A tensor under 1e-4 of its step's largest holds only rounding noise where its
    exact gradient is 0 (the key biases: softmax is shift invariant): it is held to that floor."""
    assert a.keys() == b.keys()
    for step in {key.split("/")[0] for key in a} - {"0"}:
        keys = [key for key in a if key.split("/")[0] == step]
        errors, norms = ({key: float(t.norm()) for key, t in tensors} for tensors in
                         (((key, a[key] - b[key]) for key in keys), ((key, a[key]) for key in keys)))
        total = sum(n * n for n in norms.values()) ** 0.5
        assert sum(e * e for e in errors.values()) ** 0.5 <= rel * total, f"step {step}"
        floor = 1e-4 * max(norms.values())
        for key in keys:
            assert errors[key] <= 10 * rel * max(norms[key], floor), f"{key}: |a - b| {errors[key]:.3g}, |a| {norms[key]:.3g}"


def test_the_processes_share_each_step_s_utterances_as_one_process_takes_them(corpus, two):
    lengths = [round(u.duration_s * TARGET_SR) for u in corpus.utterances]  # samples: the training clips, in order
    for name, (batch, effective, settings) in TWO.items():
        order = list(LengthGroupedEpochSampler(lengths, effective, PARAMS.adapt.seed))  # what 1 process takes
        micro_batches = [json.loads((two / name / f"rank{rank}-batches.json").read_text()) for rank in range(PROCESSES)]
        accumulation = effective // (batch * PROCESSES)
        count = settings.get("max_steps", 1)
        assert all(len(m) == count * accumulation and all(len(b) == batch for b in m) for m in micro_batches), name
        for step in range(count):
            taken = [n for m in micro_batches for b in m[step * accumulation:(step + 1) * accumulation] for n in b]
            expected = [lengths[i] for i in order[step * effective:(step + 1) * effective]]
            assert sorted(taken) == sorted(expected), f"{name}, step {step + 1}"


@pytest.mark.parametrize("name", ["ewc_accumulation_1", "ewc_accumulation_2"])
def test_two_processes_take_the_step_of_one_process_with_twice_the_batch(one, two, name):
    reference, recorded = steps(one / name), steps(two / name)
    assert {key.split("/")[0] for key in reference} == {"0", "1"}  # the start, one step
    assert_same_gradients(reference, recorded)
    assert identical(steps(two / name, rank=1), recorded)  # both processes
    after, after_two = load_file(one / name / "rank0.safetensors"), load_file(two / name / "rank0.safetensors")
    assert identical(load_file(two / name / "rank1.safetensors"), after_two)
    # the weights to 1e-6, where AdamW's first step lr·g/(|g| + ε) does not magnify rounding: its slope lr·ε/(|g| + ε)²
    # turns the gradients' ~1e-9 disagreement into up to 1e-4 where |g| ~ ε (the key biases' exact gradient is 0)
    compared = total = 0
    for n, start in ((key[2:], t) for key, t in reference.items() if key.startswith("0/")):
        steep = reference[f"1/{n}"].abs() < 100 * ADAM_EPS
        assert float((after[n] - after_two[n]).abs().masked_fill(steep, 0).max()) <= 1e-6, n
        assert float((after[n] - start).abs().masked_fill(steep, LR).min()) >= 0.5 * LR, n  # every weight took its step
        compared, total = compared + int((~steep).sum()), total + steep.numel()
    assert compared >= 0.99 * total


def test_layerdrop_under_two_processes_drops_the_same_layers_as_one_process(one, two):
    reference, recorded = steps(one / "layerdrop"), steps(two / "layerdrop")
    assert_same_gradients(reference, recorded)  # DistributedDataParallel takes the layers without a gradient
    dropped = {(key.split("/")[0], key.split(".")[3]) for key, g in reference.items()
               if ".layers." in key and not key.startswith("0/") and not g.any()}
    assert dropped, "no layer was dropped in 2 steps: the check proves nothing"
    assert identical(steps(two / "layerdrop", rank=1), recorded)


def test_a_huge_lambda_keeps_the_weights_near_theta_star(files, two):
    root, corpus_files, _ = files
    model, _ = initial_model(corpus_files, adapt_run(root, "huge_lambda", PROCESSES))
    anchor = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def distance(name: str) -> float:
        weights = load_file(two / name / "model" / "model.safetensors")
        return float(torch.stack([(weights[n] - a).norm() for n, a in anchor.items()]).norm())

    held, free = distance("huge_lambda"), distance("zero_lambda")
    assert free > 1e-3 * len(anchor) ** 0.5  # the unpenalised run moved off θ*
    assert held < 0.5 * free


@pytest.mark.parametrize("case", IMPORTANCE)
def test_the_sharded_importance_equals_the_one_process_importance(one, two, case):
    tensors, metadata = load_importance(one / case / "out" / "importance.safetensors")
    sharded, sharded_metadata = load_importance(two / case / "out" / "importance.safetensors")
    assert sharded_metadata == metadata and metadata["samples"] == "6"
    assert_same_fisher(sharded, tensors)
    assert (two / case / "out" / "utterances.tsv").read_text() == (one / case / "out" / "utterances.tsv").read_text()
    summary, sharded_summary = (json.loads((side / case / "out" / "summary.json").read_text()) for side in (one, two))
    assert sharded_summary == {**summary, "max": pytest.approx(summary["max"], rel=1e-5)}


def test_only_process_0_writes_the_outputs(two):
    for name in TWO:
        writes = {rank: json.loads((two / name / f"rank{rank}-writes.json").read_text()) for rank in range(PROCESSES)}
        assert not [w for w in writes[1] if "/checkpoints/" not in w[1]], f"{name}: process 1 wrote outputs"
        renamed = [w[2] for w in writes[0] if w[0] == "os.rename" and w[1].endswith("/model.tmp")]
        assert renamed == [str(two / name / "model")], f"{name}: the model folder is not written exactly once"
        assert any(w[0] == "open" and w[1].endswith("/plots/metrics/train/ctc_loss.tsv") for w in writes[0])
        assert (two / name / "reports" / "metrics.json").is_file()
    for case in IMPORTANCE:
        writes = {rank: json.loads((two / case / f"rank{rank}-writes.json").read_text()) for rank in range(PROCESSES)}
        assert writes[1] == [], f"importance ({case}): process 1 wrote {writes[1]}"
        renamed = [w[2] for w in writes[0] if w[0] == "os.rename"]
        assert renamed.count(str(two / case / "out" / "importance.safetensors")) == 1


def test_one_process_that_sees_several_gpus_is_refused_naming_what_to_set():
    check_one_gpu_per_process(0)  # the CPU
    check_one_gpu_per_process(1)
    with pytest.raises(DeviceError, match=r"^4 GPUs are visible to one process; set resources.nproc_per_node: 4 "
                                          r"to train on all of them \(one process per GPU\), or CUDA_VISIBLE_DEVICES=0"):
        check_one_gpu_per_process(4)  # the stage's exit line puts its name first: `adapt: 4 GPUs are ...`


def test_two_machines_through_the_c10d_rendezvous_take_the_step_of_one_process(one, two_nodes):
    name = "ewc_accumulation_1"
    assert_same_gradients(steps(one / name), steps(two_nodes / name))
    assert identical(load_file(two_nodes / name / "rank0.safetensors"), load_file(two_nodes / name / "rank1.safetensors"))
