"""Run a stage as `resources.nproc_per_node` processes, as dvc.yaml does: `python -m stages.launch N stages.<name> ARGS`.

The params are checked here first, so that a value no process may run with (an effective batch that does not divide
over N processes) is refused once, in one line; then the reproducible CPU mode's environment is set (`resources`,
`forgetting.machine`), before torch starts. N = 1: the stage runs in this very process, exactly as
`python -m stages.<name> ARGS` would. N > 1: torchrun starts N processes of the stage on this machine
(`torchrun --standalone --nproc_per_node N -m stages.<name> ARGS`; see docs/gpu.md for more than one machine).
"""

import os
import runpy
import sys

from forgetting.errors import InputError
from forgetting.machine import pinned_environment
from forgetting.params import load_params


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1 or not sys.argv[2].startswith("stages."):
        raise SystemExit(f"usage: python -m stages.launch N stages.<name> [args ...] (N >= 1), got {sys.argv[1:3]}")
    count, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    try:
        params = load_params()
    except InputError as err:
        raise SystemExit(f"{module.removeprefix('stages.')}: {err}") from err
    os.environ.update(pinned_environment(params.resources))  # before torch starts, in this process or torchrun's
    if count == 1:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        # torchrun of this very interpreter (not whichever is first on PATH)
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={count}", "-m", module, *args])


if __name__ == "__main__":
    main()
