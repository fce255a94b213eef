"""The gradio page, shared by `mtk ui` and the AUTOMATIC1111/Forge tab.

Only components and update patterns that Gradio 3.41 (AUTOMATIC1111 1.10), 4.x (Forge) and
current releases share are used: Blocks, Row, Tabs/Tab, Dropdown, Textbox, Checkbox, Button,
Markdown, State, `gr.update(...)` and `gr.Progress`. Every handler turns an error into a
visible message in the page; the work itself is done by Session.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..dtypes import ml_dtypes_module
from ..errors import ModelToolkitError, OutputExistsError
from .folders import ModelFolders
from .session import AUTO, UI_PRECISIONS, Session

OVERWRITE = "Overwrite an existing file"
# What the Basic report says of broken CLIP position ids the save will not fix: `mtk ui` has no
# such switch; the webui has its setting (extension.py passes its words).
FIX_CLIP_HINT = "mtk prune --fix-clip fixes them"


def unavailable_note() -> str:
    """What this environment cannot do, for the page's first line (a webui whose numpy no
    ml_dtypes fits)."""
    if ml_dtypes_module() is None:
        return " BF16 and FP8 are unavailable here: the ml_dtypes package does not import."
    return ""


def _message(text: str, error: bool = False) -> str:
    return f"**Error:** {text}" if error else text


def guarded(outputs_count: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A handler whose failure leaves every output as it was and shows the error in the
    status line (the last output). Never a stack trace in the page."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except OutputExistsError as exc:  # the library says what; the page says what to do
                text = _message(f"{exc}; tick “{OVERWRITE}” to replace it", error=True)
            except ModelToolkitError as exc:
                text = _message(str(exc), error=True)
            except OSError as exc:
                text = _message(f"{exc.strerror or exc}", error=True)
            except Exception as exc:  # a bug: still a message, not a trace
                text = _message(f"internal error ({exc.__class__.__name__}: {exc})", True)
            unchanged = [gr.update() for _ in range(outputs_count - 1)]
            return (*unchanged, text)

        return run

    return decorate


class SessionHolder:
    """The per-browser state: gradio deep-copies a State's initial value for each visitor, and
    this copy is an empty holder, so each visitor gets a Session of their own on first use."""

    def __init__(self, folders: ModelFolders) -> None:
        self.folders = folders
        self.session: Session | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> SessionHolder:
        return SessionHolder(self.folders)

    def get(self) -> Session:
        if self.session is None:
            self.session = Session(self.folders)
        return self.session


def build_ui(
    folders: ModelFolders,
    fix_clip: Callable[[], bool] = lambda: False,
    fix_clip_hint: str = FIX_CLIP_HINT,
) -> gr.Blocks:
    """The Model Toolkit page. `fix_clip` is read at each save (the webui setting);
    `fix_clip_hint` is what the report says when it is off."""

    def session_of(holder: SessionHolder) -> Session:
        session = holder.get()
        session.fix_clip = fix_clip()
        session.fix_clip_hint = fix_clip_hint
        return session

    with gr.Blocks(title="Model Toolkit", analytics_enabled=False) as blocks:
        state = gr.State(SessionHolder(folders))
        with gr.Row():
            source = gr.Dropdown(
                label="Source", choices=Session(folders).sources(), elem_id="mtk-source"
            )
            load = gr.Button("Load", variant="primary", elem_id="mtk-load")
            refresh = gr.Button("Refresh", elem_id="mtk-refresh")
            clear = gr.Button("Clear", elem_id="mtk-clear")
        status = gr.Markdown(
            "Choose a model and press Load." + unavailable_note(), elem_id="mtk-status"
        )
        with gr.Tabs():
            with gr.Tab("Basic", id="basic", elem_id="mtk-basic-tab"):
                basic = gr.Textbox(label="Report", lines=10, interactive=False, elem_id="mtk-basic")
            with gr.Tab("Advanced", id="advanced", elem_id="mtk-advanced-tab"):
                with gr.Row():
                    arch = gr.Dropdown(label="Architecture", choices=[], elem_id="mtk-arch")
                    cls = gr.Dropdown(label="Class", choices=[], elem_id="mtk-class")
                    component = gr.Dropdown(
                        label="Component", choices=[AUTO], value=AUTO, elem_id="mtk-component"
                    )
                with gr.Row():
                    import_from = gr.Dropdown(
                        label="Import from", choices=[], elem_id="mtk-import-from"
                    )
                    import_button = gr.Button("Import", elem_id="mtk-import")
                with gr.Row():
                    export_name = gr.Textbox(label="Export as", elem_id="mtk-export-name")
                    export_button = gr.Button("Export", elem_id="mtk-export")
                advanced = gr.Textbox(
                    label="Report", lines=20, interactive=False, elem_id="mtk-advanced"
                )
        with gr.Row():
            precision = gr.Dropdown(
                label="Precision",
                choices=list(UI_PRECISIONS),
                value="Auto",
                elem_id="mtk-precision",
            )
            name = gr.Textbox(label="Name", elem_id="mtk-name")
            overwrite = gr.Checkbox(label=OVERWRITE, value=False)
            save = gr.Button("Save", variant="primary", elem_id="mtk-save")

        def advanced_choices(session: Session) -> tuple[Any, Any, Any, Any, Any]:
            archs = session.architectures()
            chosen_arch = archs[0] if archs else None
            classes = session.classes(chosen_arch) if chosen_arch else []
            chosen_cls = classes[0] if classes else None
            return (
                gr.update(choices=archs, value=chosen_arch),
                gr.update(choices=classes, value=chosen_cls),
                gr.update(choices=session.components(chosen_arch, chosen_cls), value=AUTO)
                if chosen_cls
                else gr.update(choices=[AUTO], value=AUTO),
                gr.update(choices=session.import_candidates(chosen_cls) if chosen_cls else []),
                gr.update(value=session.suggested_export_name(chosen_cls) if chosen_cls else ""),
            )

        model_outputs = [basic, advanced, arch, cls, component, import_from, export_name]

        @guarded(len(model_outputs) + 2)
        def on_load(state_: SessionHolder, label: str, precision_: str, progress=gr.Progress()):
            session = session_of(state_)
            if not label:
                raise ModelToolkitError("choose a model in Source first")
            with session.lock:
                progress(0.1, desc="Reading the header")
                session.load(label)
                progress(0.3, desc="Computing the metric")
                reports = session.reports(precision_)
                choices = advanced_choices(session)
            return (
                *reports,
                *choices,
                gr.update(value=session.suggested_name()),
                f"Loaded {label}.",
            )

        load.click(
            on_load,
            inputs=[state, source, precision],
            outputs=[*model_outputs, name, status],
        )

        @guarded(2)
        def on_refresh(state_: SessionHolder) -> tuple[Any, str]:
            session = session_of(state_)
            return gr.update(choices=session.sources()), "Refreshed the model list."

        refresh.click(on_refresh, inputs=[state], outputs=[source, status])

        @guarded(len(model_outputs) + 1)
        def on_clear(state_: SessionHolder) -> tuple[Any, ...]:
            session = session_of(state_)
            with session.lock:
                session.clear()
            return (
                "",
                "",
                gr.update(choices=[], value=None),
                gr.update(choices=[], value=None),
                gr.update(choices=[AUTO], value=AUTO),
                gr.update(choices=[], value=None),
                "",
                "Cleared.",
            )

        clear.click(on_clear, inputs=[state], outputs=[*model_outputs, status])

        @guarded(3)
        def on_precision(state_: SessionHolder, precision_: str) -> tuple[Any, Any, str]:
            session = session_of(state_)
            if not session.loaded:
                return gr.update(), gr.update(), ""
            with session.lock:
                return (*session.reports(precision_), f"Size estimate for {precision_}.")

        precision.change(on_precision, inputs=[state, precision], outputs=[basic, advanced, status])

        # Choosing an architecture or class leaves the status line alone (gr.update()): these
        # also fire right after Load, whose message must stay.
        @guarded(4)
        def on_arch(state_: SessionHolder, arch_: str) -> tuple[Any, Any, Any, Any]:
            session = session_of(state_)
            classes = session.classes(arch_) if arch_ else []
            chosen = classes[0] if classes else None
            return (
                gr.update(choices=classes, value=chosen),
                gr.update(choices=session.components(arch_, chosen) if chosen else [AUTO]),
                gr.update(choices=session.import_candidates(chosen) if chosen else []),
                gr.update(),
            )

        arch.change(on_arch, inputs=[state, arch], outputs=[cls, component, import_from, status])

        @guarded(4)
        def on_class(state_: SessionHolder, arch_: str, cls_: str) -> tuple[Any, Any, Any, Any]:
            session = session_of(state_)
            if not cls_:
                return gr.update(), gr.update(), gr.update(), gr.update()
            return (
                gr.update(choices=session.components(arch_, cls_), value=AUTO),
                gr.update(choices=session.import_candidates(cls_), value=None),
                gr.update(value=session.suggested_export_name(cls_)),
                gr.update(),
            )

        cls.change(
            on_class,
            inputs=[state, arch, cls],
            outputs=[component, import_from, export_name, status],
        )

        @guarded(len(model_outputs) + 1)
        def on_import(
            state_: SessionHolder,
            cls_: str,
            label: str,
            precision_: str,
            progress=gr.Progress(),
        ) -> tuple[Any, ...]:
            session = session_of(state_)
            if not cls_ or not label:
                raise ModelToolkitError("choose a class and a file to import from")
            with session.lock:
                progress(0.1, desc=f"Importing {cls_}")
                session.import_component(cls_, label)
                progress(0.3, desc="Computing the metric")
                reports = session.reports(precision_)
                archs = session.architectures()
            return (
                *reports,
                gr.update(choices=archs, value=archs[0] if archs else None),
                gr.update(),
                gr.update(),
                gr.update(),
                gr.update(),
                f"Imported {cls_} from {label}.",
            )

        import_button.click(
            on_import,
            inputs=[state, cls, import_from, precision],
            outputs=[*model_outputs, status],
        )

        def written(progress: Any, verb: str) -> Callable[[int, int], None]:
            return lambda done, total: progress(done / max(total, 1), desc=verb)

        @guarded(2)
        def on_export(
            state_: SessionHolder,
            cls_: str,
            component_: str,
            export_name_: str,
            precision_: str,
            overwrite_: bool,
            progress=gr.Progress(),
        ) -> tuple[Any, ...]:
            session = session_of(state_)
            if not cls_:
                raise ModelToolkitError("choose a class to export")
            with session.lock:
                path = session.export(
                    cls_,
                    component_,
                    export_name_,
                    precision_,
                    overwrite_,
                    written(progress, f"Exporting {cls_}"),
                )
            return gr.update(choices=session.sources()), f"Exported {cls_} to {path}."

        export_button.click(
            on_export,
            inputs=[state, cls, component, export_name, precision, overwrite],
            outputs=[source, status],
        )

        @guarded(2)
        def on_save(
            state_: SessionHolder,
            name_: str,
            precision_: str,
            overwrite_: bool,
            progress=gr.Progress(),
        ) -> tuple[Any, str]:
            session = session_of(state_)
            with session.lock:
                path = session.save(name_, precision_, overwrite_, written(progress, "Saving"))
            return gr.update(choices=session.sources()), f"Saved {path}."

        save.click(on_save, inputs=[state, name, precision, overwrite], outputs=[source, status])
    return blocks


def enable_queue(blocks: gr.Blocks, concurrency: int = 4) -> None:
    """Several requests at once, so that a long save does not hold up other users' pages
    (the keyword changed between Gradio 3 and 4)."""
    try:
        blocks.queue(default_concurrency_limit=concurrency)
    except TypeError:
        blocks.queue(concurrency_count=concurrency)
