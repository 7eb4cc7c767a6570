"""The Qt shell: everything that imports PySide6, pyqtgraph or superqt lives here."""
