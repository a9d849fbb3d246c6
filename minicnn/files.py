"""Files written safely and read warily: atomic writes, and .npz archives with a JSON entry.

An archive written by `write_npz` holds the arrays as np.savez stores them ("name.npy" members)
and one more, "__minicnn__": a JSON text (`meta`). `NpzReader` opens an archive once and reads
it in the order a careful loader needs: the JSON, then the .npy headers (shapes and dtypes, no
data), then only the arrays asked for. Nothing is unpickled (an object array is refused), and
every read error is a ValueError naming the file; the caller's own errors pass through untouched.
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = 1
META_KEY = "__minicnn__"
META_LIMIT = 16 << 20       # characters: a model's JSON is kilobytes; more is not a minicnn file
READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError)   # a damaged member


H5PY_HINT = 'pip install -e ".[keras]" (or pip install h5py)'


def import_h5py(purpose):
    """The h5py module, imported only when a Keras format is read or written (minicnn works
    without it); an ImportError saying how to install it otherwise."""
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{purpose} needs h5py: {H5PY_HINT}") from None
    return h5py


def atomic_write(path, write):
    """Call write(file) on a temp file beside `path`, fsync, then rename it over `path`.

    A crash at any point leaves either the old file or the new one, never half a file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)    # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_npz(path, arrays, meta):
    """Atomically write `arrays` (name -> array) and the JSON-able `meta` to `path`."""
    atomic_write(path, lambda f: np.savez(f, **{META_KEY: np.array(json.dumps(meta))}, **arrays))


def read_npz(path, members=None):
    """(meta, arrays) from a file written by `write_npz`; clear errors for anything else.

    members(meta) -> the names of the arrays to read (default: all). Only those are
    decompressed, so a file's other members cost nothing, however large they claim to be.
    """
    with NpzReader(path) as archive:
        names = archive.array_names() if members is None else list(members(archive.meta))
        return archive.meta, archive.arrays(names)


class Stored:
    """An array's shape and dtype as its .npy header in the archive states them."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


class NpzReader:
    """`with NpzReader(path) as archive:` the archive opened once; `archive.meta` (the checked
    JSON), `archive.headers(names)` ({name: Stored}), `archive.arrays(names)` ({name: array})."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such model file")
        with open(self.path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":        # every .npz is a zip archive
                raise ValueError(f"{self.path}: not a minicnn model file (not an .npz archive)")
        self.zip = self._reading(lambda: zipfile.ZipFile(self.path))
        self.names = {info.filename[:-len(".npy")] for info in self.zip.infolist() if info.filename.endswith(".npy")}
        self._meta = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _reading(self, read, problem="truncated or corrupt model file"):
        """read(), with a damaged archive's errors turned into one ValueError naming the file."""
        try:
            return read()
        except READ_ERRORS as e:
            raise ValueError(f"{self.path}: {problem} ({type(e).__name__}: {e})") from None

    def _header(self, name):
        def read():
            with self.zip.open(name + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f".npy version {version}")
                shape, _, dtype = read_header(f)
                return Stored(shape, dtype)
        header = self._reading(read, f"array {name} has no readable .npy header")
        if header.dtype.hasobject:
            raise ValueError(f"{self.path}: holds an object (pickled) array, which minicnn refuses to load")
        return header

    @property
    def meta(self):
        """The JSON entry, checked: present, a small text, JSON, format 1."""
        if self._meta is None:
            if META_KEY not in self.names:
                raise ValueError(f"{self.path}: not a minicnn model file (no {META_KEY} entry)")
            header = self._header(META_KEY)
            if header.dtype.kind != "U" or header.shape != () or header.dtype.itemsize > 4 * META_LIMIT:
                raise ValueError(f"{self.path}: its {META_KEY} entry is not a JSON text of a model file "
                                 f"({header.dtype}, shape {header.shape})")
            try:
                meta = json.loads(str(self._array(META_KEY)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: corrupt {META_KEY} entry ({e})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{self.path}: unsupported minicnn file format "
                                 f"{meta.get('format') if isinstance(meta, dict) else meta!r}")
            self._meta = meta
        return self._meta

    def array_names(self):
        return sorted(self.names - {META_KEY})

    def headers(self, names):
        """{name: Stored} from the .npy headers alone: shapes can be checked before anything is
        allocated. Every member's header is read, so an object array anywhere is refused."""
        headers = {name: self._header(name) for name in sorted(self.names)}
        self._check_present(names)
        return {name: headers[name] for name in names}

    def arrays(self, names):
        self._check_present(names)
        for name in names:
            self._header(name)                     # refuses object arrays before reading any
        return {name: self._array(name) for name in names}

    def _array(self, name):
        def read():
            with self.zip.open(name + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        return self._reading(read)

    def _check_present(self, names):
        missing = [n for n in names if n not in self.names or n == META_KEY]
        if missing:
            raise ValueError(f"{self.path}: array {missing[0]} is missing from the file")
