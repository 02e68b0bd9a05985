"""Run an example training script with a non-finite loss on the last process at chosen updates (tests only).

    accelerate launch tests/inject_nonfinite.py 2 3 -- examples/train_joint.py [its flags]

The scripts ship no test hook: this launcher patches `TrainingLoop.all_processes_finite` (the finite check every
update step goes through) so that, at the listed updates, the last process's loss is NaN; then it runs the script
as `__main__`. Every process must then drop the whole update.
"""

import runpy
import sys

from lzn_hf.training.loop import TrainingLoop


def main(argv):
    split = argv.index("--")
    updates = {int(update) for update in argv[:split]}
    script, *script_argv = argv[split + 1 :]
    check = TrainingLoop.all_processes_finite

    def all_processes_finite(loop, loss):
        accelerator = loop.accelerator
        if loop.global_step + 1 in updates and accelerator.process_index == accelerator.num_processes - 1:
            loss = loss * float("nan")  # this process only: the decision must still be taken on every process
        return check(loop, loss)

    TrainingLoop.all_processes_finite = all_processes_finite
    sys.argv = [script, *script_argv]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
