registered: dict[str, list] = {"ui_tabs": [], "ui_settings": [], "app_started": []}


def on_ui_tabs(callback):
    registered["ui_tabs"].append(callback)


def on_ui_settings(callback):
    registered["ui_settings"].append(callback)


def on_app_started(callback):
    registered["app_started"].append(callback)
