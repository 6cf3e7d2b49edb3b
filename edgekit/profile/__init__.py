"""Device profiles: the schema, the shipped catalog, and profiling this host or a phone over adb.

Example::

    from edgekit.profile import find_profile, profile_host
    s24 = find_profile("galaxy-s24")
    me = profile_host(quick=True)      # detects and measures this machine
"""

from edgekit.profile.catalog import find_profile, list_profiles, load_profile, parse_profile, profiles_dir
from edgekit.profile.schema import SCHEMA_VERSION, DeviceProfile

__all__ = ["DeviceProfile", "SCHEMA_VERSION", "find_profile", "list_profiles", "load_profile",
           "parse_profile", "profiles_dir", "profile_host", "profile_adb"]


def profile_host(*args, **kwargs):  # imported lazily: measuring pulls in torch
    """See :func:`edgekit.profile.host.profile_host`."""
    from edgekit.profile.host import profile_host as _f

    return _f(*args, **kwargs)


def profile_adb(*args, **kwargs):
    """See :func:`edgekit.profile.adb.profile_adb`."""
    from edgekit.profile.adb import profile_adb as _f

    return _f(*args, **kwargs)
