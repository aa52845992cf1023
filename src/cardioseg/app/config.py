"""Settings of the web app (one :class:`AppConfig` per server)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Environment variable holding the access token (same as ``--token``).
TOKEN_ENV = "CARDIOSEG_TOKEN"
#: Environment variable for the default data folder.
DATA_DIR_ENV = "CARDIOSEG_DATA_DIR"
#: Default upload size limit in bytes (2 GiB: a large DICOM cine study zipped).
DEFAULT_MAX_UPLOAD = 2 * 1024**3


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    """``$CARDIOSEG_DATA_DIR`` or ``./cardioseg-data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "cardioseg-data")


@dataclass
class AppConfig:
    """Everything a server needs to know.

    Attributes:
        data_dir: Folder of the SQLite database and of the study files.
        host: Address the server binds to; anything but loopback requires a token.
        port: TCP port (informative for the app; used by :func:`~cardioseg.app.server.serve`).
        token: Access token. ``None``: taken from ``$CARDIOSEG_TOKEN``, else generated when the
            host is not loopback (and not required on loopback).
        checkpoint: Model checkpoint; ``None`` uses the shipped default weights.
        segmenter_factory: Builds the segmenter (default: ``Segmenter(checkpoint)``); called once
            in the worker thread. Tests inject a tiny model through it or ``checkpoint``.
        max_upload_bytes: Refuse request bodies larger than this (HTTP 413).
        max_image_voxels: Refuse NIfTI images with more voxels than this.
        max_queued: Refuse uploads while this many jobs wait (HTTP 503).
        max_attempts: A job interrupted this many times (server killed) is marked failed.
        write_pdf: Also write ``report.pdf`` for each study.
        seg_phases: Phases of a DICOM cine exported as DICOM-SEG: ``"ed-es"`` or ``"all"``.
        start_worker: Run the background analysis worker (tests of the queue turn it off).
        num_threads: Torch CPU threads of the worker (``None`` keeps torch's default).
        poll_seconds: How often the idle worker looks at the jobs table.
        token_generated: Set when the token was generated here (to print it at start).
    """

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    checkpoint: str | Path | None = None
    segmenter_factory: Callable[[], Any] | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_image_voxels: int = 600_000_000
    max_queued: int = 200
    max_attempts: int = 3
    write_pdf: bool = True
    seg_phases: str = "ed-es"
    start_worker: bool = True
    num_threads: int | None = None
    poll_seconds: float = 1.0
    token_generated: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV) or None
        if self.token is None and not is_loopback(self.host):
            self.token = secrets.token_urlsafe(24)
            self.token_generated = True
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the access token must have at least 8 characters")
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes must be at least 1024")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        from cardioseg.options import SEG_PHASES

        if self.seg_phases not in SEG_PHASES:
            raise ValueError(
                f"seg_phases must be one of {', '.join(SEG_PHASES)}, got {self.seg_phases!r}"
            )

    @property
    def token_required(self) -> bool:
        """Whether requests must carry the access token."""
        return self.token is not None

    @property
    def loopback(self) -> bool:
        """Whether the server is bound to a loopback address."""
        return is_loopback(self.host)

    def make_segmenter(self) -> Any:
        """Build the segmenter (once per worker)."""
        if self.segmenter_factory is not None:
            return self.segmenter_factory()
        from cardioseg.inference import Segmenter

        return Segmenter(self.checkpoint, num_threads=self.num_threads)
