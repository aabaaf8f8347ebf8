"""Built-in plugins, registered through the `cn_clip.training` entry points like any third party's."""
