"""One exception family, so the CLI and nodes can turn any expected failure into one clear line."""


class KpPerceptionError(Exception):
    """Base of every error the user can cause (bad input, missing model, bad config)."""


class ImageConversionError(KpPerceptionError, ValueError):
    """A sensor_msgs Image/CompressedImage that cannot be converted; the message names the problem."""


class DataError(KpPerceptionError):
    """An unreadable or unusable dataset source (bag, video, folder, annotations)."""


class ModelLoadError(KpPerceptionError):
    """A model file, sidecar, engine or checkpoint that is missing, corrupt or incompatible."""


class ConfigError(KpPerceptionError):
    """An invalid configuration value or override."""


class CameraInfoError(KpPerceptionError, ValueError):
    """A sensor_msgs/CameraInfo the nodes cannot use (unsupported model, bad K or D, wrong size)."""


class ObservationError(KpPerceptionError, ValueError):
    """A policy observation (message or layout) that does not match what the consumer expects."""
