"""Help › About: version, purpose and data attribution; the bundled model's card; third-party licences.

Three tabs. The licence list is read from the installed distributions' metadata by
:mod:`viewer.notices` (the bundle carries the same metadata), the same source as the bundle's
THIRD_PARTY_NOTICES.txt, so the dialog lists exactly what is shipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTabWidget, QTextBrowser, QVBoxLayout, QWidget

from viewer import DEFAULT_STRIDE, PATCH_SIZE, __version__, notices
from viewer.model import model_card_path

_HEADER = f"""# HistoViewer {__version__}

H&E histopathology viewer with a ConvNet tumour heatmap
({PATCH_SIZE}×{PATCH_SIZE} px windows, heatmap step {DEFAULT_STRIDE} px).

**Research use only — not for diagnosis.** The heatmap is the output of a small network trained on
a few dozen images; it has not been validated for clinical use.

**Data.** The bundled model was trained on BreCaHAD: Aksac A., Demetrick D. J., Özyer T., Alhajj R.
(2019), *BreCaHAD: a dataset for breast cancer histopathological annotation and diagnosis*, BMC
Research Notes 12:82, doi:10.6084/m9.figshare.7379186.v3. Licence: CC BY 4.0
(https://creativecommons.org/licenses/by/4.0/). The dataset itself is not shipped.

**Licence.** HistoViewer is MIT-licensed. It ships third-party components under their own
licences, among them Qt (LGPL 3.0) and OpenSlide (LGPL 2.1): see the *Third-party licences* tab.

"""


def notices_file() -> Path | None:
    """THIRD_PARTY_NOTICES.txt beside the bundle's executable (None in a pip install)."""
    if getattr(sys, "frozen", False):
        path = Path(sys.executable).resolve().parent / "THIRD_PARTY_NOTICES.txt"
        return path if path.is_file() else None
    return None


def about_markdown(model_path: str | None) -> str:
    """The About tab: header and the model in use (a fine-tuned model's own card with it)."""
    model = f"Model in use: `{model_path}`\n\n" if model_path else "Model in use: the bundled model (see *Model card*).\n\n"
    if model_path:
        model += _finetune_card(model_path)
    return _HEADER + model


def model_card_markdown() -> str:
    card = model_card_path()
    try:
        return card.read_text(encoding="utf-8")
    except OSError:
        return f"*The model card ({card.name}) is not installed.*"


def licences_markdown() -> str:
    """Every shipped third-party component with its version and licence, and the LGPL notes."""
    items = notices.components()
    full = notices_file()
    where = (f"The full licence texts are in `{full}`." if full else
             "The full licence texts are in each package's metadata; `python -m viewer.notices --out "
             "THIRD_PARTY_NOTICES.txt` collects them into one file (the app bundle ships that file).")
    lines = ["# Third-party licences", "", where, "", "## LGPL components", ""]
    present = {notices.canonical(c.name) for c in items}
    for name, text in notices.LGPL_COMPONENTS.items():
        if name in present:
            lines += [f"**{name}.** {text}", ""]
    lines += ["## Every component", "", "| Component | Version | Licence |", "|---|---|---|"]
    for c in items:
        lines.append(f"| {c.name} | {c.version} | {c.licence.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _browser(markdown: str) -> QTextBrowser:
    browser = QTextBrowser()
    browser.setOpenExternalLinks(True)
    browser.setMarkdown(markdown)
    return browser


def _finetune_card(model_path: str) -> str:
    """A fine-tuned model's own card (from which model, by SHA-256), before the bundled one's."""
    from viewer.errors import InputError
    from viewer.finetune import finetune_card
    from viewer.model import read_model_metadata

    try:
        card = finetune_card(read_model_metadata(model_path))
    except (InputError, OSError):
        return ""
    return f"{card}\nThe bundled model's card is under *Model card*.\n\n" if card else ""


class AboutDialog(QDialog):
    def __init__(self, model_path: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About HistoViewer")
        self.resize(720, 600)
        self.browser = _browser(about_markdown(model_path))
        self.card = _browser(model_card_markdown())
        self.licences = _browser(licences_markdown())
        self.tabs = QTabWidget()
        self.tabs.addTab(self.browser, "About")
        self.tabs.addTab(self.card, "Model card")
        self.tabs.addTab(self.licences, "Third-party licences")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(buttons)
