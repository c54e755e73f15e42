"""A safetensors import as /api/create performs it: uploaded blobs -> folder -> checked -> GGUF blob.

The client uploads each file of the model folder as a blob and names them in ``files`` (file name ->
digest).  :class:`SafetensorsImport` lays them out as a folder of symlinks to the blobs, in a temp
folder inside the models folder as Ollama does, checks the folder in a child process (fast: config,
safetensors headers and tokenizer, no tensor data), and converts it in another child straight into a
blob writer's temp file, which then becomes the model layer.  All of it is blocking: call it from
worker threads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.errors import ApplianceError, InsufficientStorage
from appliance.store.blobs import DISK_FULL_MESSAGE, BlobStore
from appliance.store.convert import ConversionError
from appliance.store.convert.child import Progress, check_in_child, convert_in_child, link_files
from appliance.store.gguf import GGUFInfo, read_gguf
from appliance.store.manifests import MEDIA_MODEL, Layer

#: Prefix of the link folders in the models folder (a start-up clean-up may remove stale ones).
LINK_DIR_PREFIX = ".convert-"


def is_safetensors_import(files: Mapping[str, str]) -> bool:
    """Whether an /api/create ``files`` map is a safetensors folder rather than GGUF files."""
    return any(name.endswith(".safetensors") for name in files)


class SafetensorsImport:
    """The uploaded files of one safetensors model, linked into a folder until :meth:`close`."""

    def __init__(self, blobs: BlobStore, files: Mapping[str, str], self_command: Sequence[str]) -> None:
        self._blobs = blobs
        self._command = list(self_command)
        self.folder = Path(tempfile.mkdtemp(prefix=LINK_DIR_PREFIX, dir=blobs.models_dir))
        try:
            link_files(self.folder, files, blobs.path)
        except BaseException:
            self.close()
            raise

    def check(self) -> list[str]:
        """Refuse (ConversionError, 400) what cannot be converted; return warnings."""
        return check_in_child(self._command, self.folder)

    def convert(self, progress: Progress) -> tuple[Layer, GGUFInfo, list[str]]:
        """Convert into a new blob: the model layer, its GGUF header and the converter's warnings."""
        with self._blobs.open_writer() as writer:
            # The child writes the writer's temp file and inherits its descriptor, with the lock that
            # keeps a prune away from the file while the child lives (as the quantizer does).
            try:
                warnings = convert_in_child(self._command, self.folder, writer.temp_path, progress,
                                            pass_fds=(writer.fileno(),))
            except ConversionError:
                raise
            except ApplianceError:
                if shutil.disk_usage(self._blobs.blobs_dir).free < 1 << 20:
                    raise InsufficientStorage(f"{DISK_FULL_MESSAGE} (converting the model)") from None
                raise
            info = read_gguf(writer.temp_path, max_array=0)
            writer.adopt_contents()
            digest, _ = writer.commit()
            return Layer(MEDIA_MODEL, digest, writer.size), info, warnings

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SafetensorsImport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
