import os
from types import SimpleNamespace


class OptionInfo:
    """As in AUTOMATIC1111 1.10 and Forge: settings have a section and a category."""

    def __init__(self, default=None, label="", section=None, category_id=None):
        self.default, self.label, self.section = default, label, section
        self.category_id = category_id


class Options:
    def __init__(self):
        self.data_labels = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        setattr(self, key, info.default)


opts = Options()
cmd_opts = SimpleNamespace(
    ckpt_dir=None, vae_dir=os.environ.get("STANDIN_VAE_DIR"), lora_dir=None, embeddings_dir=None
)
