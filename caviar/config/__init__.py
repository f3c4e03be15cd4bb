"""The config layer: the typed schema (`schema`), reading files and `--set` (`loading`), durations,
the shipped experiments and their catalog. No torch, no Ray.

Resolution order: the schema's defaults < the experiment file (YAML) < ``--set key=value``
overrides. Bad input raises :class:`ConfigError` naming the dotted key and the fix.
"""

from caviar.config.loading import (  # noqa: F401
    build_config,
    load_config,
    parse_override,
    parse_yaml,
    read_saved_config,
    read_yaml,
)
from caviar.config.schema import (  # noqa: F401 - the names the rest of caviar imports from caviar.config
    CONVNET_SHAPE,
    INTEGERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    AverageConfig,
    CheckpointConfig,
    Choice,
    Config,
    DataConfig,
    ModelConfig,
    Range,
    ResourcesConfig,
    Scalar,
    SearchConfig,
    SpaceConfig,
    StageConfig,
    TrainConfig,
    default_data_root,
    default_storage,
)
from caviar.errors import ConfigError  # noqa: F401
from caviar.layout import CONFIG_FILE  # noqa: F401
