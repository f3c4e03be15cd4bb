"""The config layer: the typed schema (`schema`, `space`), reading files and `--set` (`loading`),
durations, scheduler rules, the shipped experiments and their catalog. No torch, no Ray.

Resolution order: the schema's defaults < the experiment file (YAML) < ``--set key=value``
overrides. Bad input raises :class:`ConfigError` naming the dotted key and the fix.
"""

# The names the rest of caviar imports from caviar.config:
from caviar.config.loading import (  # noqa: F401
    build_config,
    check_num_classes,
    derive_config,
    load_config,
    parse_override,
    parse_yaml,
    read_saved_config,
    read_yaml,
    with_classes,
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
    default_data_root,
    default_storage,
)
from caviar.config.space import (  # noqa: F401
    CONVNET_SHAPE,
    INTEGERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    Choice,
    Range,
    Scalar,
    SpaceConfig,
)
from caviar.errors import ConfigError  # noqa: F401
from caviar.layout import CONFIG_FILE  # noqa: F401
