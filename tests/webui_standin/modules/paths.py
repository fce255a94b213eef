import os

models_path = os.environ["STANDIN_MODELS"]
