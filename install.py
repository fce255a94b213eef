"""AUTOMATIC1111/Forge extension installer: the webui runs it with its `launch` module.

Only the runtime dependencies the webui does not already have (it has numpy and gradio);
this file must not import model_toolkit, whose dependencies it is installing.
"""

import launch

REQUIREMENTS = {
    "ml_dtypes": "ml_dtypes>=0.4",
    "safetensors": "safetensors>=0.4",
    "watchdog": "watchdog>=4",
    "blake3": "blake3>=0.4",
}

for module, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"Model Toolkit requirement: {requirement}")
