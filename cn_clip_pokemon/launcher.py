"""`cn-clip-pokemon train`: upstream's own cn_clip.training.main on the CPU, one GPU, or torchrun.

Every flag of upstream's training keeps its meaning and is passed through untouched; this module
adds only the process layout (``--nproc-per-node``, ``--nnodes``, ``--node-rank``,
``--master-addr``, ``--master-port``, ``--launcher``) and ``--pretrained``, upstream's way to start
from released weights in one flag (``--device`` is a flag of upstream's parser, patches/0027). One
process runs upstream's main in this process with patches/ applied in memory; more than one hands the same command to
torchrun (``python -m torch.distributed.run ... -m cn_clip_pokemon train ...``), whose workers
then each run one process of the same kind. This module parses, checks and chooses a launcher
through the plugins; what each built-in launcher runs lives with it, in default_plugins/launchers.py.

Before any model is built it checks what a user can get wrong (missing LMDB folders, weight files,
unknown model or dataset names) and says which command makes the missing thing.
"""
import os
import sys

from cn_clip_pokemon.errors import UserError

def launcher_parser():
    from cn_clip_pokemon.arguments import CommandLineParser, non_negative_int, port_number, positive_int

    parser = CommandLineParser(  # a usage error is one line and exit 2, like every command's
        prog="cn-clip-pokemon train",
        add_help=False,
        allow_abbrev=False,  # never swallow an abbreviation of one of upstream's flags
        description=(
            "Fine-tune Chinese-CLIP with upstream's own training (cn_clip.training.main), on the CPU, "
            "one GPU, or many through torchrun. Every upstream flag below keeps its meaning. A dataset "
            "made by `cn-clip-pokemon build-dataset` trains with --dataset pokemon (no batch holds a "
            "Pokemon twice) unless --dataset none is given; on the CPU --num-workers defaults to a "
            "quarter of the cores (at least 1). Running the same command again continues from "
            "LOGS/NAME/checkpoints/epoch_latest.pt."
        ),
        epilog=(
            "Example (CPU, tiny model, a dataset made by `cn-clip-pokemon build-dataset`): "
            "cn-clip-pokemon train --train-data DATASET/lmdb/train --vision-model ViT-T-8-32 "
            "--text-model RBT-Tiny-chinese --batch-size 64 --max-epochs 2 --logs experiments --name tiny"
        ),
    )
    group = parser.add_argument_group("process layout (cn-clip-pokemon)")
    group.add_argument("-h", "--help", action="store_true", help="show this help and upstream's options")
    group.add_argument(
        "--launcher",
        default="auto",
        help="a registered launcher (see `cn-clip-pokemon plugins`): local, torchrun, ... "
        "(default auto: torchrun when more than one process is asked for, else local)",
    )
    group.add_argument("--nproc-per-node", type=positive_int, default=1, help="processes per node, one per GPU (default 1)")
    group.add_argument("--nnodes", type=positive_int, default=1, help="number of nodes (default 1)")
    group.add_argument("--node-rank", type=non_negative_int, default=0, help="rank of this node (default 0)")
    group.add_argument("--master-addr", default=None, help="address of node 0 (several nodes)")
    group.add_argument("--master-port", type=port_number, default=None, help="free port on node 0 (several nodes)")
    group.add_argument(
        "--pretrained",
        metavar="FILE",
        default=None,
        help="start from released weights such as clip_cn_vit-b-16.pt, or a transformers ChineseCLIP "
        "folder such as the Hub's OFA-Sys/chinese-clip-vit-base-patch16 (upstream's --resume FILE "
        "--reset-data-offset --reset-optimizer), unless this run (--logs/--name) already has "
        "checkpoints/epoch_latest.pt: then it continues from that",
    )
    return parser


def pretrained_argv(pretrained, args):
    """Upstream's flags that start this run from ``pretrained``: none when the run has its own
    epoch_latest.pt, which upstream's main then resumes by itself."""
    own = os.path.join(args.logs, args.name, "checkpoints", "epoch_latest.pt")
    if os.path.isfile(own):
        return []
    return ["--resume", pretrained, "--reset-data-offset", "--reset-optimizer"]


def _has_flag(argv, flag):
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def print_help(parser):
    parser.print_help()
    print("\nupstream options (cn_clip.training.main, passed through unchanged):\n")
    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.training.params import parse_args

    try:
        parse_args(["--help"])
    except SystemExit:
        pass


def cpu_worker_count():
    """Data-loading processes for a CPU run: a worker feeds ~1,000+ small pictures/s, and every
    core a worker takes is one the training step does not get (upstream's default is 4)."""
    from cn_clip_pokemon.files import available_cores

    return max(1, min(4, available_cores() // 4))


def prepare_upstream_argv(argv):
    """Check upstream's flags and fill in our defaults; returns (argv, args) or raises UserError."""
    from cn_clip_pokemon import patching, plugins
    from cn_clip_pokemon.dataset_format import info_path_of_split
    from cn_clip_pokemon.devices import decide_layout

    argv = list(argv)
    patching.install()
    from cn_clip.training.params import parse_args

    args = parse_upstream_args(parse_args, argv)  # bad usage: one line and exit 2, as for every command
    if args.train_data is not None:
        _check_lmdb(args.train_data, "--train-data", "train")
    if args.val_data is not None:
        _check_lmdb(args.val_data, "--val-data", "valid")
    for flag, path in (("--clip-weight-path", args.clip_weight_path), ("--bert-weight-path", args.bert_weight_path)):
        if path is not None and not os.path.isfile(path):
            raise UserError(
                f"{flag} {path}: no such file. {flag} takes the weights of one tower (OpenAI CLIP for "
                "the image encoder, BERT for the text encoder); to fine-tune a released Chinese-CLIP "
                "checkpoint such as clip_cn_vit-b-16.pt give --pretrained FILE instead, or leave out "
                f"{flag} to start from random initialisation"
            )
    if args.resume is not None and os.path.isdir(args.resume):
        from cn_clip_pokemon.hf_format import check_hf_folder

        check_hf_folder(args.resume)  # a transformers ChineseCLIP folder, or one line on what it lacks
    elif args.resume is not None and not os.path.isfile(args.resume):
        # upstream would log "no checkpoint found" and quietly train from scratch
        raise UserError(
            f"--resume {args.resume}: no such file. Give an existing checkpoint (epoch_latest.pt, or "
            "pretrained weights such as clip_cn_vit-b-16.pt with --reset-data-offset --reset-optimizer), "
            "or leave out --resume: a run continues from its own epoch_latest.pt by itself"
        )
    from cn_clip.training.data import model_config_file

    for flag, name in (("--vision-model", args.vision_model), ("--text-model", args.text_model)):
        try:
            config_path = model_config_file(name)
        except ValueError as error:
            raise UserError(f"{flag}: {error}") from None
        if flag == "--vision-model":
            _warn_about_small_pictures(args, config_path)
    _check_context_length(args, config_path)
    datasets = plugins.get_datasets()
    if args.dataset is None:
        if info_path_of_split(args.train_data).is_file() and "pokemon" in datasets:
            # built by build-dataset: batches that never repeat a Pokemon
            argv += ["--dataset", "pokemon"]
    elif args.dataset.lower() != "none" and args.dataset not in datasets:
        skipped = plugins.why_not_registered("dataset", args.dataset)
        raise UserError(
            f"--dataset {args.dataset}: no such dataset plugin{f' ({skipped})' if skipped else ''}; "
            f"registered: {', '.join(sorted(datasets))}, or none"
        )
    elif args.train_data is None and getattr(datasets.get(args.dataset), "needs_train_data", True):
        raise UserError(
            f"--dataset {args.dataset} reads its pictures from --train-data: give --train-data DATASET/lmdb/train "
            "(a plugin that makes its own data says so with needs_train_data = False)"
        )
    _warn_about_borrowed_hyper_parameters(argv, args)
    try:
        on_cpu = decide_layout(requested=args.device_request).device == "cpu"
    except (RuntimeError, ValueError) as error:
        raise UserError(str(error)) from None
    if on_cpu and not _has_flag(argv, "--num-workers"):
        argv += ["--num-workers", str(cpu_worker_count())]
    return argv, parse_upstream_args(parse_args, argv)


# Upstream's counts that must be at least this (None: the flag may be left unset); argparse only
# checks they are whole numbers, and 0 or less fails deep in training with a traceback.
UPSTREAM_COUNTS = {
    "batch_size": 1, "valid_batch_size": 1, "log_interval": 1, "context_length": 1, "max_epochs": 1,
    "max_steps": 1, "valid_step_interval": 1, "valid_epoch_interval": 1, "save_epoch_frequency": 1,
    "accum_freq": 1, "num_workers": 0, "valid_num_workers": 0, "warmup": 0,
}


def parse_upstream_args(parse_args, argv):
    """Upstream's ``parse_args(argv)``, whose argparse prints its whole usage and exits 2 on a bad
    flag, with that error as one UsageError line instead; then the counts of UPSTREAM_COUNTS."""
    import contextlib
    import io

    from cn_clip_pokemon.arguments import UsageError

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parse_args(argv)
    except SystemExit as exit:
        if exit.code in (0, None):
            raise
        lines = said.getvalue().strip().splitlines()
        message = lines[-1].split("error: ", 1)[-1] if lines else f"bad arguments: {' '.join(argv)}"
        raise UsageError(f"{message} (see `cn-clip-pokemon train --help`)") from None
    for name, least in UPSTREAM_COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise UsageError(
                f"argument --{name.replace('_', '-')}: must be at least {least}, not {value} (see `cn-clip-pokemon train --help`)"
            )
    from cn_clip_pokemon.devices import check_device_name

    try:
        check_device_name(args.device_request)  # the one rule of every command's --device
    except ValueError as error:
        raise UsageError(f"argument --device: {error} (see `cn-clip-pokemon train --help`)") from None
    return args


def _check_lmdb(path, flag, split):
    from cn_clip_pokemon.dataset_format import LMDB_DATABASES, lmdb_dir

    imgs, pairs = LMDB_DATABASES
    missing = [p for p in (path, os.path.join(path, pairs), os.path.join(path, imgs)) if not os.path.isdir(p)]
    if missing:
        raise UserError(
            f"{flag} {path}: {missing[0]} is not a folder (an LMDB split has {imgs}/ and {pairs}/). "
            f"Make it with `cn-clip-pokemon build-dataset --images PICTURES --out DATASET`, then pass "
            f"{flag} {lmdb_dir('DATASET', split).as_posix()}"
        )
    rows = _checked_pair_count(path)
    if rows == 0:
        raise UserError(
            f"{flag} {path} holds no image-text pairs: an epoch would have no batch. Rebuild the dataset "
            "with more pictures (`cn-clip-pokemon build-dataset` reports what it skipped and why)"
        )


# the LMDB splits whose pictures this process checked (os.pathsep-separated absolute paths); torchrun's
# workers inherit it and do not decode every picture header again
PICTURES_CHECKED = "CN_CLIP_POKEMON_PICTURES_CHECKED"


def _checked_pair_count(path):
    """How many pairs an LMDB split has, each read once without running code (a crafted value is
    refused here, in one line, before any worker process would meet it; the dataset plugin's
    grouping then reuses what was read); None when the split cannot be read (upstream then says why)."""
    import lmdb

    from cn_clip_pokemon.dataset_format import read_pairs

    from cn_clip_pokemon.dataset_split import check_lmdb_pictures

    try:
        pairs = read_pairs(path)
        checked = os.environ.get(PICTURES_CHECKED, "").split(os.pathsep)
        if not (inside_torchrun() and os.path.abspath(path) in checked):  # the launching process did
            check_lmdb_pictures(path, pairs)  # every picture a pair names is there and is one
            os.environ[PICTURES_CHECKED] = os.pathsep.join(sorted(set(filter(None, checked)) | {os.path.abspath(path)}))
        return len(pairs)
    except (lmdb.Error, OSError, ValueError):
        return None


def _warn_about_small_pictures(args, vision_config_path):
    """Pictures stored smaller than the model's input are upscaled (blurred) at every step: say so."""
    import json

    from cn_clip_pokemon.dataset_format import info_path_of_split, read_dataset_info

    if args.train_data is None:
        return
    info_path = info_path_of_split(args.train_data)
    try:
        # a dataset_info.json that is not ours (hand-edited, nested 100,000 deep) only costs the warning
        info = read_dataset_info(info_path, "") if info_path.is_file() else {}
        stored = info.get("image_size") if isinstance(info, dict) else None
        with open(vision_config_path, encoding="utf-8") as f:
            resolution = json.load(f).get("image_resolution")
    except (OSError, ValueError, UserError):
        return
    if isinstance(stored, int) and isinstance(resolution, int) and stored < resolution:
        print(
            f"cn-clip-pokemon: warning: {info_path.parent} stores pictures at {stored} px but "
            f"--vision-model {args.vision_model} takes {resolution} px: they are upscaled (blurred) at every "
            f"step; rebuild with `cn-clip-pokemon build-dataset ... --image-size {resolution}`",
            file=sys.stderr,
        )


def _check_context_length(args, text_config_path):
    """Texts of --context-length tokens must fit the text tower's position embeddings (else an index
    error deep inside BERT's forward pass)."""
    import json

    with open(text_config_path, encoding="utf-8") as f:
        positions = json.load(f).get("text_max_position_embeddings")
    if isinstance(positions, int) and args.context_length > positions:
        raise UserError(
            f"--context-length {args.context_length} is longer than --text-model {args.text_model} takes "
            f"({positions} positions): give --context-length {positions} or less"
        )


def _warn_about_borrowed_hyper_parameters(argv, args):
    """Upstream has lr / Adam defaults for its own vision models only; say when a plugin's borrows them."""
    from cn_clip.training.params import get_default_params

    if get_default_params(args.vision_model):
        return
    borrowed = {name: value for name, value in get_default_params("ViT-B-16").items()
                if not _has_flag(argv, "--" + name.replace("_", "-"))}
    if borrowed:
        shown = ", ".join(f"--{name} {value}" for name, value in borrowed.items())
        print(
            f"cn-clip-pokemon: note: --vision-model {args.vision_model} has no upstream defaults; "
            f"using ViT-B-16's {shown} (give them to choose)",
            file=sys.stderr,
        )


def inside_torchrun():
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ


def train_main(argv):
    """`cn-clip-pokemon train ...`: returns the exit code."""
    from cn_clip_pokemon import plugins
    parser = launcher_parser()
    options, upstream_argv = parser.parse_known_args(argv)
    if options.help:
        print_help(parser)
        return 0
    if options.pretrained is not None:
        if _has_flag(upstream_argv, "--resume"):
            parser.error("--pretrained and --resume both say where to start: give one")
        if os.path.isdir(options.pretrained):
            from cn_clip_pokemon.hf_format import check_hf_folder

            check_hf_folder(options.pretrained)  # a transformers ChineseCLIP folder (the Hub's layout)
        elif not os.path.isfile(options.pretrained):
            raise UserError(
                f"{options.pretrained} not found; download the weights (clip_cn_vit-b-16.pt for ViT-B-16) "
                "from Chinese-CLIP's model list and put them there"
            )
    upstream_argv, args = prepare_upstream_argv(upstream_argv)
    if options.pretrained is not None:
        upstream_argv += pretrained_argv(options.pretrained, args)

    launchers = plugins.get_launchers()
    name = options.launcher
    if name == "auto":
        many = options.nproc_per_node * options.nnodes > 1
        name = "torchrun" if many and not inside_torchrun() else "local"
    if name not in launchers:
        skipped = plugins.why_not_registered("launcher", name)
        raise UserError(
            f"--launcher {name}: no such launcher{f' ({skipped})' if skipped else ''}; "
            f"registered: {', '.join(sorted(launchers))}"
        )
    return plugins.launch(name, options, upstream_argv)  # a plugin's launcher that raises is one line
