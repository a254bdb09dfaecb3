"""Whether the weights file (or exported graph) a pipeline loaded, or the int8 scales its graphs were made
from, is still what is on disk.

A deployment that copies new weights over the file while the node runs changes nothing the node does: the
network was loaded at configure. The node's /diagnostics says so (node_stats), so a monitor and a recording
show that the car runs other weights than the ones installed; a recalibration written over the scales
beside the weights likewise. The file is looked at with stat() (cheap, each report) and hashed again only
when that changes."""
from pathlib import Path
from typing import Optional

from .cache_key import weights_identity

MISSING = "missing"


class WeightsWatch:
    def __init__(self, path, loaded_identity: str):
        self.path = Path(path)
        self.loaded = loaded_identity  # as cache_key.weights_identity gave it at load
        self._stat = self._look()
        self._on_disk = loaded_identity

    def _look(self):
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def changed(self) -> Optional[str]:
        """None while the file holds what was loaded; otherwise what it holds now (its identity), or MISSING."""
        stat = self._look()
        if stat != self._stat:
            self._stat = stat
            try:
                self._on_disk = weights_identity(self.path) if stat else MISSING
            except OSError:  # gone between stat and read
                self._on_disk = MISSING
        return None if self._on_disk == self.loaded else self._on_disk
