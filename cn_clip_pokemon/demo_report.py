"""The demo's report: what each evaluation measures, the training curve as a PNG, and the summary
printed at the end."""
import json
import shlex
from pathlib import Path

from cn_clip_pokemon.demo_stages import SEED_CANDIDATES
from cn_clip_pokemon.errors import install_hint


def plot_training_curve(metrics_file, out):
    """Loss and in-batch accuracy per epoch (train and valid) from metrics.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [json.loads(line) for line in Path(metrics_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    curves = {}
    for row in rows:
        if "epoch_end" not in row and row.get("split") != "valid":
            continue
        split = row.get("split", "train")
        curves.setdefault(split, []).append(row)
    if not curves:
        # no per-epoch rows: fall back to every logged training step
        curves["train"] = [row for row in rows if row.get("split", "train") == "train"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, points in sorted(curves.items()):
        epochs = [p["epoch"] for p in points]
        loss_ax.plot(epochs, [p["loss"] for p in points], marker="o", label=split)
        for key, style in (("i2t_acc", "-"), ("t2i_acc", "--")):
            values = [p.get(key) for p in points]
            if any(v is not None for v in values):
                acc_ax.plot(epochs, [100 * (v or 0) for v in values], style, marker="o", label=f"{split} {key[:3]}")
    loss_ax.set(title="contrastive loss", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="in-batch accuracy", xlabel="epoch", ylabel="%", ylim=(0, 100))
    for axis in (loss_ax, acc_ax):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# What each evaluation measures, as the report says it.
EVALUATIONS = {
    "unseen_frames": "unseen frames (other frames of animations trained on: mostly memory)",
    "unseen_views": "unseen views (a whole animation per Pokemon never trained on, e.g. its shiny back)",
}


def print_report(report):
    print("\n== Report")
    for key, label in EVALUATIONS.items():
        evaluation = report["evaluation"][key]
        zero_shot = evaluation["zero_shot"]
        print(f"{label}: {evaluation['pictures']} pictures, candidate names: {evaluation['names']}")
        print(f"  zero-shot      top-1 {zero_shot['top1']:6.2f}%  top-5 {zero_shot['top5']:6.2f}%")
        for name, field in (("text->image", "text_to_image"), ("image->text", "image_to_text")):
            recall = evaluation.get(field)
            if recall:
                print(f"  {name:13}  R@1 {recall['r1']:6.2f}%  R@5 {recall['r5']:6.2f}%  R@10 {recall['r10']:6.2f}%")
    question = report["question"]
    if question:
        seed = " (the seed's example)" if question["candidates"] == SEED_CANDIDATES else ""
        print(f"{question['name']} ({question['picture']}, a view never trained on){seed}:")
        print("  " + "".join(f"{name:>10}" for name in question["candidates"]))
        for when in ("before", "after"):
            probabilities = question[when]
            cells = "".join(f"{probabilities.get(name, 0):12.4f}" for name in question["candidates"])
            print(f"{cells}   {when} training")
    print("files:")
    for name, path in report["files"].items():
        print(f"  {name}: {path}")
    training = report.get("training") or {}
    if training.get("steps"):
        budget = ""
        if training.get("budget_minutes") and training.get("budget_of") == "demo":
            budget = f"{training['budget_minutes']:g}-minute demo budget ({training['training_budget_seconds'] / 60:.1f} min of it for training), "
        elif training.get("budget_minutes"):
            budget = f"{training['budget_minutes']:g}-minute training budget, "
        planned = f" of the recipe's {training['planned_steps']}" if training.get("planned_steps") else ""
        if training.get("time_limit_minutes") and training.get("budget_steps") and training["steps"] < training["budget_steps"]:
            planned += f" ({training['budget_steps']} planned: the {training['time_limit_minutes']:g}-minute time limit stopped the run)"
        speed = f", {training['seconds_per_step']:.3f} s a step" if training.get("seconds_per_step") else ""
        if training.get("threads"):
            speed += f" with {training['threads']} thread{'s' if training['threads'] != 1 else ''}"
        print(f"training: {budget}{training['steps']}{planned} steps{speed}")
    train = report["seconds"].get("train")
    print(f"training {train / 60:.1f} min, " if train else "", end="")
    demo_budget = f" (budget {training['budget_minutes']:g})" if training.get("budget_of") == "demo" else ""
    print(f"total {report['seconds']['total'] / 60:.1f} min{demo_budget}")
    print(f"serve it as a web page ({install_hint('web')}): cn-clip-pokemon serve --checkpoint {shlex.quote(report['files']['checkpoint'])} --dataset {shlex.quote(report['files']['dataset'])}")
    print("pictures of your own, turned or cropped: add --views turns to classify, search, evaluate or serve "
          "(six views a picture; README, \"More views of each picture\")")
