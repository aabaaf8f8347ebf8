"""`build-dataset`: a picture folder, or any captions, -> upstream Chinese-CLIP's dataset format.

One concern per module, in the order a build runs:

    scan.py      the pictures of a folder: ``Picture``, the kinds of skipped entries
    captions.py  any captions: ``--any-names`` and ``--manifest``
    splits.py    the split policy (view, animation, pokemon, auto)
    process.py   the work done to each picture in worker processes, and the profiling clocks
    writers.py   the TSV, JSONL and LMDB writers (upstream's format)
    output.py    the --out folder: what a build may replace, leftovers of interrupted builds
    summary.py   dataset_info.json, the printed summary, the error when nothing could be built
    build.py     ``build_dataset``: the steps above, swapped into --out at the end
    command.py   the `build-dataset` command and its arguments

Import from the modules (``from cn_clip_pokemon.builder.build import build_dataset``): this file
imports nothing, so importing any one of them loads only what it needs.
"""
