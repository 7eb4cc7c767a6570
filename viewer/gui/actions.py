"""Every command of the window as a QAction, and the menus and toolbar that show them.

Actions are created once and shared by menus, toolbar and shortcuts, so enabling or checking
one updates every place it appears.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu, QStyle, QToolBar

from viewer import DEFAULT_STRIDE
from viewer.gui.icon import toolbar_icon
from viewer.gui.settings import WINDOW_STEPS

Key = QKeySequence.StandardKey


@dataclass
class Actions:
    open: QAction
    open_annotations: QAction
    load_model: QAction
    export_overlay: QAction
    export_heatmap: QAction
    open_heatmap: QAction
    export_legend: QAction
    close_image: QAction
    quit: QAction
    fit: QAction
    zoom_100: QAction
    zoom_in: QAction
    zoom_out: QAction
    show_image: QAction
    show_annotations: QAction
    show_heatmap: QAction
    run_heatmap: QAction
    cancel_heatmap: QAction
    auto_run: QAction
    run_visible: QAction
    run_rectangle: QAction
    improve_model: QAction
    show_tissue: QAction
    smooth_heatmap: QAction
    overview_max: QAction
    window_steps: dict[int, QAction]
    """Analysis › Window Step: one checkable action per step in px; ``data()`` holds the step."""
    window_step_group: QActionGroup
    precisions: dict[str, QAction]
    """Analysis › Precision: one checkable action per precision; ``data()`` holds its name."""
    precision_group: QActionGroup
    thread_limits: dict[int, QAction]
    """Analysis › CPU Threads: 0 = every core, else that many threads; ``data()`` holds it."""
    thread_group: QActionGroup
    about: QAction
    shortcuts: QAction
    """Help › Keyboard Shortcuts: the table is made from these actions (shortcuts_dialog.py)."""
    recent_menu: QMenu


def _action(window: QMainWindow, text: str, shortcuts: list | None = None, tip: str = "",
            icon: QStyle.StandardPixmap | str | None = None, checkable: bool = False) -> QAction:
    action = QAction(text, window)
    if shortcuts:
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(f"{tip} ({action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)})"
                          if shortcuts else tip)
    if isinstance(icon, str):
        action.setIcon(toolbar_icon(icon))
    elif icon is not None:
        action.setIcon(window.style().standardIcon(icon))
    action.setCheckable(checkable)
    window.addAction(action)  # shortcuts work even when the menu bar is hidden
    return action


def _step_label(step: int) -> tuple[str, str]:
    """Menu text and tip for a window step, said relative to the paper's step."""
    if step == DEFAULT_STRIDE:
        return f"&{step} px (paper)", f"Window step {step} px: the paper's heatmap step (default)"
    cells = (DEFAULT_STRIDE / step) ** 2  # heatmap cells relative to the paper's step
    if step < DEFAULT_STRIDE:
        return (f"&{step} px (finer, slower)",
                f"Window step {step} px: about {cells:g}× the cells of {DEFAULT_STRIDE} px; finer, but slower")
    return (f"&{step} px (coarser, faster)",
            f"Window step {step} px: about 1/{1 / cells:g} of the cells of {DEFAULT_STRIDE} px; faster, but coarser")


def _window_steps(window: QMainWindow) -> tuple[dict[int, QAction], QActionGroup]:
    group = QActionGroup(window)  # exclusive by default: exactly one step is checked
    actions = {}
    for step in WINDOW_STEPS:
        text, tip = _step_label(step)
        action = _action(window, text, tip=tip, checkable=True)
        action.setData(step)
        group.addAction(action)
        actions[step] = action
    actions[DEFAULT_STRIDE].setChecked(True)
    return actions, group


def _precisions(window: QMainWindow) -> tuple[dict[str, QAction], QActionGroup]:
    from viewer.heatmap.precision import bfloat16_support

    supported, why = bfloat16_support()
    group = QActionGroup(window)
    exact = _action(window, "&Float32 (exact)", tip="Compute the heatmap in float32: equal to the model "
                    "window by window (default)", checkable=True)
    fast = _action(window, "&BFloat16 (faster)", checkable=True,
                   tip="Compute in bfloat16: about 2.4-2.5 times as fast on a whole image, probabilities within ~0.02 of float32"
                   if supported else f"Needs a CPU with bfloat16 units; {why}")
    fast.setEnabled(supported)
    actions = {"float32": exact, "bfloat16": fast}
    for name, action in actions.items():
        action.setData(name)
        group.addAction(action)
    exact.setChecked(True)
    return actions, group


def _thread_limits(window: QMainWindow) -> tuple[dict[int, QAction], QActionGroup]:
    import os

    cores = os.cpu_count() or 1
    group = QActionGroup(window)
    actions = {0: _action(window, f"&All Cores ({cores})", tip="The heatmap uses every core (default)", checkable=True)}
    limit = 1
    while limit < cores:
        actions[limit] = _action(window, f"&{limit}", tip=f"The heatmap uses at most {limit} CPU thread"
                                 f"{'s' if limit > 1 else ''}, leaving the rest to other programs", checkable=True)
        limit *= 2
    for threads, action in actions.items():
        action.setData(threads)
        group.addAction(action)
    actions[0].setChecked(True)
    return actions, group


def build_actions(window: QMainWindow) -> Actions:
    sp = QStyle.StandardPixmap
    window_steps, window_step_group = _window_steps(window)
    precisions, precision_group = _precisions(window)
    thread_limits, thread_group = _thread_limits(window)
    return Actions(
        open=_action(window, "&Open…", [Key.Open], "Open an image (TIFF, JPEG, PNG)", sp.SP_DialogOpenButton),
        open_annotations=_action(window, "Open &Annotations…", tip="Load BreCaHAD annotation points (JSON)"),
        load_model=_action(window, "Load &Model…", tip="Use another Keras model for the heatmap"),
        export_overlay=_action(window, "&Export Overlay…", ["Ctrl+E"],
                               "Save the image with the layers as shown, at full resolution", sp.SP_DialogSaveButton),
        export_heatmap=_action(window, "Export &Heatmap…", tip="Save the heatmap array (.npy) and its geometry (.json)"),
        open_heatmap=_action(window, "Open &Heatmap Store…", tip="Show a heatmap store (.zarr) computed for this "
                             "slide, e.g. by 'histoviewer heatmap' or 'histoviewer batch'"),
        close_image=_action(window, "&Close Image", [Key.Close], "Close the image"),
        quit=_action(window, "&Quit", ["Ctrl+Q"], "Quit HistoViewer"),
        export_legend=_action(window, "Add &Legend to Exported Overlays",
                              tip="Exported overlays get a legend panel (colour bar and classes) on the right",
                              checkable=True),
        fit=_action(window, "&Fit to Window", ["F", "Ctrl+0"], "Show the whole image", "fit"),
        zoom_100=_action(window, "&100 %", ["Ctrl+1"], "One image pixel per screen pixel", "actual"),
        zoom_in=_action(window, "Zoom &In", [Key.ZoomIn, "+", "="], "Zoom in", "zoom_in"),
        zoom_out=_action(window, "Zoom &Out", [Key.ZoomOut, "-"], "Zoom out", "zoom_out"),
        show_image=_action(window, "&Image", tip="Show the slide image (exports always include it)", checkable=True),
        show_annotations=_action(window, "&Annotations", ["A"], "Show annotation markers", "annotations", True),
        show_heatmap=_action(window, "&Heatmap", ["H"], "Show the tumour heatmap", "heatmap", True),
        run_heatmap=_action(window, "&Run Heatmap", ["Ctrl+R"], "Compute the tumour heatmap", sp.SP_MediaPlay),
        cancel_heatmap=_action(window, "&Cancel", ["Esc"], "Stop computing the heatmap", sp.SP_MediaStop),
        auto_run=_action(window, "Run Heatmap on &Open", tip="Start the heatmap whenever an image opens",
                         checkable=True),
        run_visible=_action(window, "Run on &Visible Area", ["Ctrl+Shift+R"],
                            "Compute the heatmap of what is on screen only; a later run continues the rest"),
        run_rectangle=_action(window, "Analyse a &Rectangle", tip="Place a box to move and resize, then press "
                              "Enter to compute the heatmap under it", checkable=True),
        improve_model=_action(window, "&Improve Model from My Annotations…",
                              tip="Fine-tune the current model on this image's annotations as they are now "
                              "(in a separate process), save it as a new model file and use it"),
        show_tissue=_action(window, "&Tissue Mask", ["T"], "Show where tissue was detected (whole slides)",
                            checkable=True),
        smooth_heatmap=_action(window, "&Smooth Heatmap", tip="Draw the heatmap smoothly (bilinear) instead of "
                               "as exact cells; exports follow", checkable=True),
        overview_max=_action(window, "Heatmap Overview by &Maximum",
                             tip="When zoomed out, draw each block of cells by its highest probability instead "
                             "of the mean, so small tumour foci stay visible", checkable=True),
        window_steps=window_steps,
        window_step_group=window_step_group,
        precisions=precisions,
        precision_group=precision_group,
        thread_limits=thread_limits,
        thread_group=thread_group,
        about=_action(window, "&About HistoViewer", tip="Version, model card and third-party licences"),
        shortcuts=_action(window, "&Keyboard Shortcuts", [Key.HelpContents], "Every command that has a key"),
        recent_menu=QMenu("Open &Recent", window),
    )


def build_menus(window: QMainWindow, a: Actions) -> tuple[QToolBar, QMenu]:
    """Fill the menu bar and create the main toolbar; returns it and the (empty) Panels menu."""
    bar = window.menuBar()
    file = bar.addMenu("&File")
    file.addActions([a.open])
    file.addMenu(a.recent_menu)
    file.addActions([a.open_annotations, a.open_heatmap, a.load_model])
    file.addSeparator()
    file.addActions([a.export_overlay, a.export_heatmap, a.export_legend])
    file.addSeparator()
    file.addActions([a.close_image, a.quit])
    view = bar.addMenu("&View")
    view.addActions([a.fit, a.zoom_100, a.zoom_in, a.zoom_out])
    view.addSeparator()
    view.addActions([a.show_image, a.show_annotations, a.show_heatmap, a.show_tissue])
    view.addActions([a.smooth_heatmap, a.overview_max])
    view.addSeparator()
    panels = view.addMenu("&Panels")
    analysis = bar.addMenu("&Analysis")
    analysis.addActions([a.run_heatmap, a.run_visible, a.run_rectangle, a.cancel_heatmap])
    analysis.addSeparator()
    step_menu = analysis.addMenu("Window &Step")
    step_menu.setToolTipsVisible(True)  # the tips say what each step trades off
    step_menu.addActions(list(a.window_steps.values()))
    precision_menu = analysis.addMenu("&Precision")
    precision_menu.setToolTipsVisible(True)
    precision_menu.addActions(list(a.precisions.values()))
    threads_menu = analysis.addMenu("CPU &Threads")
    threads_menu.setToolTipsVisible(True)
    threads_menu.addActions(list(a.thread_limits.values()))
    analysis.addAction(a.auto_run)
    analysis.addSeparator()
    analysis.addAction(a.improve_model)
    help_menu = bar.addMenu("&Help")
    help_menu.addActions([a.shortcuts, a.about])

    toolbar = QToolBar("Main toolbar", window)
    toolbar.setObjectName("main_toolbar")  # saveState() needs a name to restore it
    toolbar.setMovable(False)
    toolbar.addActions([a.open, a.export_overlay])
    toolbar.addSeparator()
    toolbar.addActions([a.zoom_out, a.fit, a.zoom_100, a.zoom_in])
    toolbar.addSeparator()
    toolbar.addActions([a.show_annotations, a.show_heatmap])
    toolbar.addSeparator()
    toolbar.addActions([a.run_heatmap, a.cancel_heatmap])
    window.addToolBar(toolbar)
    return toolbar, panels
