"""The command-line options of every command that loads a checkpoint (classify, search, evaluate,
serve), and the ``load_checkpoint`` keywords they give."""


def add_model_options(parser):
    """The options of every command that loads a checkpoint: --checkpoint, --device, --vision-model,
    --text-model, --views, --batch-size, --no-cache (classify, search, evaluate and serve take the same)."""
    from cn_clip_pokemon.arguments import device_name, positive_int
    from cn_clip_pokemon.views import VIEWS

    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="a checkpoint file (ours, upstream's fine-tune or pretrained file, a raw state dict) "
        "or an upstream pretrained name such as ViT-B-16",
    )
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: CUDA when there is one)")
    parser.add_argument("--vision-model", default=None, help="force the vision config name (default: read from the checkpoint)")
    parser.add_argument("--text-model", default=None, help="force the text config name (default: read from the checkpoint)")
    parser.add_argument(
        "--views",
        choices=list(VIEWS),
        default="one",
        help="what the model is shown of each picture: one (the picture as it is, the default) or turns (also "
        "turned 15 degrees either way, and each at 85%% of its size; their probabilities averaged, the picture "
        "as it is counted twice): turned and cropped pictures are recognised far more often, clean ones a "
        "little less, at six times the encoding (README, \"More views of each picture\")",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="pictures per forward pass (default 32)")
    parser.add_argument(
        "--no-cache", action="store_true", help="encode every name or picture again instead of using <checkpoint>.cache/"
    )


def model_options(args):
    """The model names :func:`add_model_options` parsed, as ``load_checkpoint`` keywords."""
    return {"vision_model": args.vision_model, "text_model": args.text_model, "views": args.views}
