"""The "local" and "torchrun" launchers of `cn-clip-pokemon train`.

A launcher is an object with a ``description`` and ``launch(options, upstream_argv) -> exit code``,
where ``options`` are the process-layout flags of cn_clip_pokemon.launcher and ``upstream_argv``
upstream's training flags, already checked. A third party could register, say, a Slurm launcher.
"""
import subprocess

from cn_clip_pokemon.hookspecs import hookimpl


class LocalLauncher:
    description = "one process in this interpreter: the CPU or one GPU"

    def launch(self, options, upstream_argv):
        from cn_clip_pokemon.launcher import run_upstream_main

        return run_upstream_main(upstream_argv)


class TorchrunLauncher:
    description = "torchrun: --nproc-per-node processes on each of --nnodes nodes (one per GPU)"

    def launch(self, options, upstream_argv):
        from cn_clip_pokemon.launcher import torchrun_command

        command = torchrun_command(options, upstream_argv)
        print("+ " + " ".join(command), flush=True)
        return subprocess.call(command)


@hookimpl
def register_launchers(register):
    register("local", LocalLauncher())
    register("torchrun", TorchrunLauncher())
