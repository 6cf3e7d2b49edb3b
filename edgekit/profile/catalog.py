"""The device catalog: load, validate and look up device profiles.

Profiles ship as one JSON file per device in the top-level ``device_profiles/`` directory of the
checkout; an installed wheel carries the same files under ``<prefix>/share/edgekit/
device_profiles`` (see :func:`profiles_dir`). Set ``EDGEKIT_DEVICE_PROFILES=DIR`` to use another
catalog.

Example::

    from edgekit.profile import find_profile, list_profiles
    [p.name for p in list_profiles()][:3]
    s24 = find_profile("galaxy-s24")            # by name ...
    mine = find_profile("out/my-host.json")     # ... or by file
"""

from __future__ import annotations

import difflib
import json
import os
import site
import sys
import sysconfig
from pathlib import Path

from pydantic import ValidationError

from edgekit.errors import ProfileError
from edgekit.profile.schema import DEVICE_CLASSES, DeviceProfile


def profiles_dir() -> Path:
    """The catalog directory, first found of: ``$EDGEKIT_DEVICE_PROFILES``; the checkout's
    top-level ``device_profiles/`` (source tree, editable install); ``edgekit/device_profiles``
    inside the package; ``<prefix>/share/edgekit/device_profiles`` where a wheel installs the
    catalog as data files (``[tool.setuptools.data-files]``), for the environment's and the
    user's prefix.

    Raises:
        ProfileError: when none of them exists.
    """
    env = os.environ.get("EDGEKIT_DEVICE_PROFILES")
    if env:
        p = Path(env)
        if not p.is_dir():
            raise ProfileError(f"EDGEKIT_DEVICE_PROFILES={env} is not a directory",
                               "point it at a folder of device profile JSON files, or unset it")
        return p
    pkg = Path(__file__).resolve().parent.parent  # .../edgekit
    share = Path("share") / "edgekit" / "device_profiles"
    cands = [pkg.parent / "device_profiles", pkg / "device_profiles",
             Path(sysconfig.get_path("data")) / share, Path(sys.prefix) / share, Path(site.USER_BASE or "~") / share]
    for cand in cands:
        if cand.is_dir() and any(cand.glob("*.json")):
            return cand
    raise ProfileError("the device catalog (device_profiles/) is missing from this installation",
                       "reinstall edgekit, or set EDGEKIT_DEVICE_PROFILES=DIR")


def _field_path(loc: tuple) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def parse_profile(data: object, origin: str) -> DeviceProfile:
    """Validate a decoded profile; ``origin`` names it in errors.

    Raises:
        ProfileError: naming ``origin`` and the first bad field, e.g.
            ``device_profiles/x.json: field memory.total_gib.value: Input should be ...``.
    """
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ProfileError(f"{origin}: field {_field_path(first['loc'])}: {first['msg']}{more}",
                           "fix the field (schema: edgekit/profile/schema.py), or regenerate the "
                           "file with `edgekit profile --out FILE`") from None


def load_profile(path: str | Path) -> DeviceProfile:
    """Load and validate one profile JSON file.

    Raises:
        ProfileError: missing file, invalid JSON, or a field that fails the schema (the message
            names the file and the field).
    """
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"device profile {p} does not exist",
                           "pass a catalog name (`edgekit devices`) or a profile JSON path")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{p}: not valid JSON ({e})",
                           "fix the file, or regenerate it with `edgekit profile --out FILE`") from None
    return parse_profile(data, str(p))


def list_profiles(directory: str | Path | None = None) -> list[DeviceProfile]:
    """Every profile in the catalog, sorted by device class then name.

    Raises:
        ProfileError: a malformed file (the whole listing fails: a catalog is trusted data).
    """
    d = Path(directory) if directory is not None else profiles_dir()
    files = sorted(d.glob("*.json"))
    profiles = [load_profile(f) for f in files]
    seen: dict[str, str] = {}
    for f, p in zip(files, profiles):
        if p.name in seen:
            raise ProfileError(f"{f}: identity.name {p.name!r} is also used by {seen[p.name]}",
                               "give every profile a unique identity.name")
        seen[p.name] = str(f)
    order = {c: i for i, c in enumerate(DEVICE_CLASSES)}
    return sorted(profiles, key=lambda p: (order[p.identity.device_class], p.name))


def find_profile(name_or_path: str | Path, directory: str | Path | None = None) -> DeviceProfile:
    """A profile by catalog name (``identity.name`` or file stem) or by path to a JSON file.

    Raises:
        ProfileError: unknown name (the hint lists close matches) or a malformed file.
    """
    s = str(name_or_path)
    p = Path(s)
    if p.suffix == ".json" or os.sep in s or p.is_file():
        return load_profile(p)
    d = Path(directory) if directory is not None else profiles_dir()
    direct = d / f"{s}.json"
    if direct.is_file():
        return load_profile(direct)
    profiles = list_profiles(d)
    for prof in profiles:
        if prof.name == s.lower():
            return prof
    names = [prof.name for prof in profiles]
    close = difflib.get_close_matches(s.lower(), names, n=3, cutoff=0.4)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + \
        "`edgekit devices` lists the catalog; a path to a profile JSON also works"
    raise ProfileError(f"unknown device {s!r}", hint)
