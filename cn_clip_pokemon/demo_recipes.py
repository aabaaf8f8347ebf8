"""The demo's training recipes (``--config tiny`` and ``vit-b-16``) and the `cn-clip-pokemon train`
command line each becomes; run_scripts/pokemon_finetune_*.sh pass the same flags."""
from cn_clip_pokemon.dataset_format import lmdb_dir


# The tiny recipe, tuned to train within minutes on two CPU cores from random initialisation:
# eight epochs of the 24 frames per animation left for training (about 1,900 steps of 128), with
# some pictures recoloured or greyed (the pokemon-augmented dataset), the pictures at 32 px, every
# patch seen. What was measured is in the README ("The demo"): more steps helped unseen views most;
# 32 px pictures with every patch were both faster and far better on unseen views than 64 px with
# half the patches masked (96% against 53% top-1 on #1-160 in about the same time); light recolouring
# helped from about eight epochs on; flips, moves, scaling, strong recolouring, upstream's
# --use-augment, a larger learning rate and a smaller batch hurt.
# run_scripts/pokemon_finetune_tiny_cpu.sh passes the same flags (a test keeps them equal), and the
# demo's work folder is a ${DATAPATH}, so that script continues the demo's run.
TINY = {
    "name": "pokemon_tiny_cpu",
    "image_size": 32,
    # every picture cropped to its Pokemon on white (build-dataset --framing subject), so a user's
    # picture on one colour, inside a larger one or cut off is framed like the sprites trained on
    # (pokemon-augmented then moves and scales each picture slightly, for the box's pixel or two)
    "framing": "subject",
    "frames": 24,
    "train_flags": [
        "--device", "cpu",
        "--vision-model", "ViT-T-8-32",
        "--text-model", "RBT-Tiny-chinese",
        "--context-length", "12",
        "--batch-size", "128",
        "--valid-batch-size", "128",
        "--lr", "1e-3",
        "--wd", "0.1",
        "--warmup", "50",
        "--mask-ratio", "0",
        "--max-epochs", "8",
        "--precision", "amp",
        "--log-interval", "10",
        "--report-training-batch-acc",
        "--dataset", "pokemon-augmented",
    ],
    # One thread per operation unless the demo's probe finds every core faster (1.3x on idle cores,
    # three times slower when anything else runs beside them): with the loader's worker, two cores.
    "environment": {"OMP_NUM_THREADS": "1"},
    # the default wall-clock budget of the whole demo (--minutes; installation not included): training
    # gets what the other stages leave, so a slower machine trains fewer steps (the README gives the
    # accuracy per CPU kind measured); --minutes 0 for all of the recipe's steps
    "minutes": 9,
}

# Fine-tuning the real model instead (--config vit-b-16 --pretrained FILE): one GPU with about 26 GB at batch 128, the flags
# of run_scripts/pokemon_finetune_vit-b-16.sh.
VIT_B_16 = {
    "name": "pokemon_finetune_vit-b-16",
    "image_size": 224,
    "framing": "subject",
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
    """The value the recipe gives ``flag`` (as written, a string; None when the recipe does not give it)."""
    flags = recipe["train_flags"]
    return flags[flags.index(flag) + 1] if flag in flags else None


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
