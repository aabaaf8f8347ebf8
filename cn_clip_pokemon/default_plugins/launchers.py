"""The "local" and "torchrun" launchers of `cn-clip-pokemon train`, and the code each runs.

A launcher is an object with a ``description`` and ``launch(options, upstream_argv) -> exit code``,
where ``options`` are the process-layout flags of `cn-clip-pokemon train` and ``upstream_argv``
upstream's training flags, already checked. A third party could register, say, a Slurm launcher.
"""
import subprocess
import sys

from cn_clip_pokemon.hookspecs import hookimpl

# what each torchrun worker runs with `python -m`: this package, in a process of its own (not an import)
PACKAGE = "cn_clip_pokemon"


def run_upstream_main(argv):
    """Upstream's cn_clip.training.main.main(argv) in this process, patches applied; returns 0."""
    from cn_clip_pokemon import patching

    patching.install()
    import torch
    import torch.distributed as dist
    from cn_clip.training import main as upstream_main
    from cn_clip.training.params import parse_args

    # upstream uses --seed for its sampler only: seed the model's initialisation too, so that a
    # command run twice starts from the same weights
    torch.manual_seed(parse_args(argv).seed)
    try:
        upstream_main.main(argv)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def torchrun_command(options, argv):
    """The torchrun command line that starts ``cn-clip-pokemon train ARGV`` on every process."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={options.nproc_per_node}"]
    if options.nnodes == 1 and options.master_addr is None and options.master_port is None:
        command.append("--standalone")  # one node: torchrun picks a free port itself
    else:
        command += [f"--nnodes={options.nnodes}", f"--node-rank={options.node_rank}"]
        if options.master_addr is not None:
            command.append(f"--master-addr={options.master_addr}")
        if options.master_port is not None:
            command.append(f"--master-port={options.master_port}")
    # "--" ends torchrun's own options: its parser would otherwise take upstream's --logs for an
    # ambiguous abbreviation of its --logs-specs and refuse the command
    return command + ["-m", "--", PACKAGE, "train", *argv]


class LocalLauncher:
    description = "one process in this interpreter: the CPU or one GPU"

    def launch(self, options, upstream_argv):
        return run_upstream_main(upstream_argv)


class TorchrunLauncher:
    description = "torchrun: --nproc-per-node processes on each of --nnodes nodes (one per GPU)"

    def launch(self, options, upstream_argv):
        command = torchrun_command(options, upstream_argv)
        print("+ " + " ".join(command), flush=True)
        return subprocess.call(command)


@hookimpl
def register_launchers(register):
    register("local", LocalLauncher())
    register("torchrun", TorchrunLauncher())
