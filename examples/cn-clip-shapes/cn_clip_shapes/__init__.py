"""cn-clip-shapes: drawn shapes with Chinese captions ("红色圆形"), trained without any files.

Registers the dataset "shapes" (it draws its own pictures, so `train --dataset shapes` needs no
--train-data) and two model configs sized for it, ViT-Shapes-32 and RBT-Shapes.
"""
import random

from cn_clip_pokemon import hookimpl, unique_text_batches

COLOURS = {"红色": (220, 30, 30), "绿色": (30, 160, 60), "蓝色": (40, 70, 210), "黄色": (235, 200, 20)}
SHAPES = ("圆形", "方形", "三角形")
CAPTIONS = [colour + shape for colour in COLOURS for shape in SHAPES]  # 12 captions


def draw(caption, size, rng):
    """A picture of ``caption`` ("红色圆形"): the shape at a random place and size on white."""
    from PIL import Image, ImageDraw

    colour, shape = caption[:2], caption[2:]
    picture = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(picture)
    extent = rng.uniform(0.4, 0.8) * size
    left, top = rng.uniform(0, size - extent), rng.uniform(0, size - extent)
    box = (left, top, left + extent, top + extent)
    if shape == "圆形":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "方形":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(left + extent / 2, top), (left, top + extent), (left + extent, top + extent)], fill=COLOURS[colour])
    return picture


class ShapePictures:
    """A torch Dataset: item i is a new drawing of CAPTIONS[i % 12], as upstream's LMDBDataset returns it."""

    def __init__(self, length, resolution, max_txt_length, seed):
        from cn_clip.clip.utils import image_transform

        self.length, self.resolution, self.max_txt_length, self.seed = length, resolution, max_txt_length, seed
        self.transform = image_transform(resolution)
        self.captions = [CAPTIONS[index % len(CAPTIONS)] for index in range(length)]

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        from cn_clip.clip import _tokenizer, tokenize

        caption = self.captions[index]
        image = self.transform(draw(caption, self.resolution, random.Random(self.seed * 100003 + index)))
        text = tokenize([caption], context_length=self.max_txt_length)[0]
        eos_index = text.tolist().index(_tokenizer.vocab["[SEP]"])
        return image, text, eos_index


class ShapesDataset:
    description = "drawn shapes with Chinese captions (12 kinds), made on the fly: no --train-data"
    needs_train_data = False

    def get_dataset(self, args, is_train, max_txt_length=64, epoch_id=0):
        from cn_clip.training.data import fetch_resolution

        # 20 new drawings of each caption per epoch; batched as the built-in dataset is: never one
        # caption twice in a batch (a false negative), batches of at most 12 (the captions there are)
        pictures = ShapePictures(20 * len(CAPTIONS), fetch_resolution(args.vision_model), max_txt_length,
                                 seed=args.seed + (epoch_id if is_train else 10**6))
        return unique_text_batches(pictures, pictures.captions, args, is_train, epoch_id)


@hookimpl
def register_datasets(register):
    register("shapes", ShapesDataset())


@hookimpl
def register_model_configs(register):
    register("ViT-Shapes-32", {"embed_dim": 64, "image_resolution": 32, "vision_layers": 2,
                               "vision_width": 64, "vision_patch_size": 8})
    register("RBT-Shapes", {"vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0,
                            "text_hidden_act": "gelu", "text_hidden_dropout_prob": 0.0,
                            "text_hidden_size": 64, "text_initializer_range": 0.1,
                            "text_intermediate_size": 128, "text_max_position_embeddings": 64,
                            "text_num_attention_heads": 2, "text_num_hidden_layers": 2,
                            "text_type_vocab_size": 2})
