"""Save figures that can be trusted: offline HTML, PNG/SVG when a browser is there, the data, and a manifest.

Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves half a figure. HTML uses ``include_plotlyjs="directory"``: one shared ``plotly.min.js`` next to the
figures, refreshed when plotly's version changes, so every page opens offline. No CDN anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

__all__ = ["IMAGE_FORMATS", "FigureWriter", "atomic_write", "image_export_available"]

IMAGE_FORMATS = ("png", "svg")

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: str | bytes | Callable[[Path], None]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename. ``data`` may
    be a function that writes the file at the path it is given (a library's own ``save_file``): it writes in a
    temporary folder of its own, so whatever temporary files it makes itself (safetensors' ``save_file`` makes
    a ``.tmpXXXXXX`` beside its target) go with that folder, after a crash too (``.{name}.*.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(data):
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            data(folder / path.name)
            os.chmod(folder / path.name, 0o644)
            os.replace(folder / path.name, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared figures unreadable to others
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def image_export_available() -> tuple[bool, str]:
    """Whether PNG/SVG export can work here, and if not, why."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False, "kaleido is not installed (pip install 'interp[export]')"
    if _browser() is None:
        return False, "no Chromium found (apt-get install -y --no-install-recommends chromium)"
    return True, ""


def _json_default(obj):
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def to_json(data) -> str:
    """Deterministic JSON (sorted keys, floats rounded by repr) for the data behind a figure."""
    return json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n"


@dataclass
class FigureWriter:
    """Writes figures into ``out_dir`` and keeps ``manifest.json`` there.

    Start one per run: it starts kaleido's sync server once (exports then take ~0.1 s each) and says once
    when image export is unavailable. Use it as a context manager so the server stops.

    Example:
        >>> with FigureWriter(Path("figures"), run_meta) as writer:
        ...     writer.save(fig, "parameter_breakdown", data, params={"spec": "gpt2"})
    """

    out_dir: Path
    run_meta: dict  # model spec/label/hash, backend, versions, seed, command: recorded per figure
    formats: tuple[str, ...] = ("png",)  # image formats besides HTML; () for none, ("png", "svg") for both
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # images of an earlier run that this one could not remake
    _export: bool | None = None

    def __enter__(self) -> Self:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._refresh_plotlyjs()
        return self

    def __exit__(self, *exc) -> None:
        if self._export:
            import kaleido

            with contextlib.suppress(Exception):
                kaleido.stop_sync_server(silence_warnings=True)

    def _refresh_plotlyjs(self) -> None:
        from plotly.offline import get_plotlyjs

        target = self.out_dir / "plotly.min.js"
        js = get_plotlyjs()
        if not target.exists() or target.read_text(encoding="utf-8") != js:
            atomic_write(target, js)

    def _can_export(self) -> bool:
        if self._export is None:
            ok, why = image_export_available() if self.formats else (False, "")
            if ok:
                try:
                    import kaleido

                    kaleido.start_sync_server(mathjax=False, silence_warnings=True)  # MathJax would hit a CDN
                except Exception as err:  # noqa: BLE001  any failure to start a browser means: no export
                    ok, why = False, f"kaleido could not start Chromium: {err}"
            if not ok and self.formats:
                print(f"note: image export unavailable, writing HTML and JSON only: {why}", file=sys.stderr)
            self._export = ok
        return self._export

    def save(self, fig, name: str, data: dict, *, params: dict | None = None, wall_seconds: float | None = None,
             meta: dict | None = None, pages: dict[str, str] | None = None) -> list[Path]:
        """Write ``name.html``, ``name.json`` (the data) and ``name.png`` when possible; record the manifest.

        ``meta`` overrides the run's metadata for this figure (e.g. a figure made from the architecture alone).
        ``pages`` are static HTML pages that go with the figure (relative path -> text), written into the folder
        ``name/``, which they replace whole (a page of an earlier run is never left beside them).
        """
        if pages:
            folder = self.out_dir / name
            if folder.exists():
                shutil.rmtree(folder)
            for relative, text in sorted(pages.items()):
                atomic_write(folder / relative, text)
        paths = [self.out_dir / f"{name}.html", self.out_dir / f"{name}.json"]
        # A fixed div id (plotly's default is random), so a regenerated gallery shows no diff when nothing changed.
        atomic_write(paths[0], fig.to_html(include_plotlyjs="directory", full_html=True, div_id=f"figure-{name}"))
        atomic_write(paths[1], to_json(data))
        if self._can_export():
            import kaleido

            for fmt in self.formats:
                target = self.out_dir / f"{name}.{fmt}"
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{fmt}", dir=self.out_dir)
                os.fchmod(fd, 0o644)
                os.close(fd)
                try:
                    kaleido.write_fig_sync(fig, path=tmp, opts={"format": fmt, "width": fig.layout.width or 1100,
                                                                "height": fig.layout.height or 650})
                    os.replace(tmp, target)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                paths.append(target)
        for fmt in IMAGE_FORMATS:  # an image this run did not write would sit beside HTML it no longer matches
            stale = self.out_dir / f"{name}.{fmt}"
            if stale not in paths and stale.exists():
                stale.unlink()
                self.removed.append(stale)
        self._record(name, paths, params or {}, wall_seconds, {**(meta or {}), **({"pages": len(pages)} if pages else {})})
        self.written.extend(paths)
        return paths

    def _record(self, name: str, paths: list[Path], params: dict, wall_seconds: float | None, meta: dict) -> None:
        manifest_path = self.out_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"figures": {}}
        manifest["figures"][name] = {
            **self.run_meta,
            **meta,
            "files": sorted(p.name for p in paths),
            "params": params,
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 2),
        }
        atomic_write(manifest_path, json.dumps(manifest, indent=1, sort_keys=True, default=_json_default) + "\n")
