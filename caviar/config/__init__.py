"""The config layer: the typed schema (`schema`, `space`), reading files and `--set` (`loading`),
durations, scheduler rules, the shipped experiments and their catalog, the config reference. No
torch, no Ray.

Resolution order: the schema's defaults < the experiment file (YAML) < ``--set key=value``
overrides. Bad input raises :class:`caviar.ConfigError` naming the dotted key and the fix.

The public API is `caviar`'s (`caviar.load_config`, `caviar.Config`, `caviar.ConfigError`); caviar's
own modules import each name from the module that defines it (tests/test_docs.py checks). The names
below are the public names of the module `caviar.config` before the layer folders (04a5f63, when it
was one file; tests/fixtures/premove_names.json), kept importable from here only for what was written then: scripts, and the Ray state
of experiment folders saved then, which `--resume` unpickles (see caviar/moved.py for the other
modules of that era).
"""

from caviar.config.loading import (  # noqa: F401
    build_config,
    load_config,
    parse_override,
    parse_yaml,
    read_saved_config,
    read_yaml,
)
from caviar.config.schema import (  # noqa: F401
    AverageConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    ModelConfig,
    ResourcesConfig,
    SearchConfig,
    StageConfig,
    TrainConfig,
    default_storage,
)
from caviar.config.space import (  # noqa: F401
    CATEGORIES,
    CONVNET_SHAPE,
    INTEGERS,
    LR_SCHEDULES,
    MEANINGFUL,
    OPTIMIZERS,
    ByOptimizer,
    Choice,
    Param,
    Range,
    Scalar,
    SpaceConfig,
)
from caviar.errors import ConfigError  # noqa: F401
from caviar.layout import CONFIG_FILE  # noqa: F401

