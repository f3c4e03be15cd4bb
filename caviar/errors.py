"""caviar's errors, in one hierarchy: each message tells the user what to fix; the CLI prints it
and exits 2. The modules that raise them re-export the class they raise (`caviar.config.ConfigError`)."""


class CaviarError(Exception):
    """An error whose message tells the user what to fix; the CLI prints it and exits 2."""


class ConfigError(CaviarError):
    """A bad experiment file or override; the message names the key and the fix."""


class DataError(CaviarError):
    """Data missing, unreadable or inconsistent; the message names the file or config key to fix."""


class DeviceError(CaviarError):
    """A trial was given a GPU that this process cannot use; the message says why and the fix."""


class TrialOutOfMemory(CaviarError):
    """A trial ran out of GPU memory; the message names its batch size, model and memory share."""
