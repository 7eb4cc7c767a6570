"""Help › About: version, what the program is for, and the bundled model's card (Markdown)."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from viewer import DEFAULT_STRIDE, PATCH_SIZE, __version__
from viewer.model import model_card_path

_HEADER = f"""# HistoViewer {__version__}

H&E histopathology viewer with a ConvNet tumour heatmap
({PATCH_SIZE}×{PATCH_SIZE} px windows, heatmap step {DEFAULT_STRIDE} px).
**Research use only — not for diagnosis.**

BreCaHAD images: Aksac A., Demetrick D. J., Özyer T., Alhajj R. (2019), BMC Research Notes 12:82,
doi:10.6084/m9.figshare.7379186.v3, CC BY 4.0.

"""


def about_markdown(model_path: str | None) -> str:
    """The About text: header, the model in use, and the bundled model card if present."""
    model = f"Model in use: `{model_path}`\n\n" if model_path else "Model in use: the bundled model.\n\n"
    if model_path:
        model += _finetune_card(model_path)
    card = model_card_path()
    try:
        body = card.read_text(encoding="utf-8")
    except OSError:
        body = f"*The model card ({card.name}) is not installed.*"
    return _HEADER + model + "---\n\n" + body


def _finetune_card(model_path: str) -> str:
    """A fine-tuned model's own card (from which model, by SHA-256), before the bundled one's."""
    from viewer.errors import InputError
    from viewer.finetune import finetune_card
    from viewer.model import read_model_metadata

    try:
        card = finetune_card(read_model_metadata(model_path))
    except (InputError, OSError):
        return ""
    return f"{card}\nThe base model's card follows when the base is the bundled model.\n\n" if card else ""


class AboutDialog(QDialog):
    def __init__(self, model_path: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About HistoViewer")
        self.resize(640, 560)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setMarkdown(about_markdown(model_path))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
