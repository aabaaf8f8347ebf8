"""The demo's training recipes (``--config tiny`` and ``vit-b-16``) and the `cn-clip-pokemon train`
command line each becomes; run_scripts/pokemon_finetune_*.sh pass the same flags."""
from cn_clip_pokemon.dataset_format import lmdb_dir


# The tiny recipe, tuned to train within ten minutes on two CPU cores from random initialisation:
# eight epochs of the 24 frames per animation left for training (about 2,000 steps of 128), with
# some pictures recoloured or greyed (the pokemon-augmented dataset). What was measured is in the
# README ("The demo"): more steps helped unseen views most, light recolouring helped from about
# eight epochs on, and flips, moves, scaling, strong recolouring and upstream's --use-augment hurt.
# run_scripts/pokemon_finetune_tiny_cpu.sh passes the same flags (a test keeps them equal), and the
# demo's work folder is a ${DATAPATH}, so that script continues the demo's run.
TINY = {
    "name": "pokemon_tiny_cpu",
    "image_size": 64,
    "frames": 24,
    "train_flags": [
        "--device", "cpu",
        "--vision-model", "ViT-T-8-64",
        "--text-model", "RBT-Tiny-chinese",
        "--context-length", "12",
        "--batch-size", "128",
        "--valid-batch-size", "128",
        "--lr", "1e-3",
        "--wd", "0.1",
        "--warmup", "50",
        "--mask-ratio", "0.5",
        "--max-epochs", "8",
        "--precision", "amp",
        "--log-interval", "10",
        "--report-training-batch-acc",
        "--dataset", "pokemon-augmented",
    ],
    # One thread per operation: with the data loader's worker that fills two cores. PyTorch's two
    # threads ran as fast on idle cores and three times slower when anything else ran beside them.
    "environment": {"OMP_NUM_THREADS": "1"},
    # no wall-clock budget unless --train-minutes asks for one: fewer steps than the recipe's give a
    # much weaker model (300 steps on a busy AVX2-only CPU: 8% top-1 on unseen animations, not 65%)
    "minutes": None,
}

# Fine-tuning the real model instead (--config vit-b-16 --pretrained FILE): one GPU with about 26 GB at batch 128, the flags
# of run_scripts/pokemon_finetune_vit-b-16.sh.
VIT_B_16 = {
    "name": "pokemon_finetune_vit-b-16",
    "image_size": 224,
    "frames": 4,
    "train_flags": [
        "--vision-model", "ViT-B-16",
        "--text-model", "RoBERTa-wwm-ext-base-chinese",
        "--context-length", "52",
        "--batch-size", "128",
        "--valid-batch-size", "128",
        "--lr", "5e-5",
        "--wd", "0.001",
        "--warmup", "100",
        "--max-epochs", "20",
        "--precision", "amp",
        "--use-augment",
        "--save-epoch-frequency", "1",
        "--keep-checkpoints", "2",
        "--valid-epoch-interval", "1",
        "--log-interval", "10",
        "--report-training-batch-acc",
    ],
    "minutes": None,
}

CONFIGS = {"tiny": TINY, "vit-b-16": VIT_B_16}


def recipe_epochs(recipe, args):
    """The epochs to train: --max-epochs when given, else the recipe's."""
    flags = recipe["train_flags"]
    epochs = int(flags[flags.index("--max-epochs") + 1])
    if args.max_epochs is not None:
        return args.max_epochs
    return epochs


def recipe_flag(recipe, flag):
    """The value the recipe gives ``flag`` (as written, a string)."""
    flags = recipe["train_flags"]
    return flags[flags.index(flag) + 1]


def train_argv(recipe, args, dataset, experiments, epochs):
    """The `cn-clip-pokemon train` arguments of ``recipe`` on ``dataset``'s train and valid splits."""
    flags = list(recipe["train_flags"])
    flags[flags.index("--max-epochs") + 1] = str(epochs)
    if "--device" in flags:
        flags[flags.index("--device") + 1] = "auto"  # the tiny recipe is for CPUs, but a GPU is used when there is one
    argv = [
        "train",
        "--train-data", lmdb_dir(dataset, "train"),
        "--val-data", lmdb_dir(dataset, "valid"),
        "--logs", experiments,
        "--name", recipe["name"],
        *flags,
    ]
    if args.pretrained is not None:
        argv += ["--pretrained", args.pretrained]
    return argv
