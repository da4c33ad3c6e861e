"""Where the committed demo assets live."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BASE_DIR = PACKAGE_DIR / "base"
DATA_DIR = PACKAGE_DIR / "data"
