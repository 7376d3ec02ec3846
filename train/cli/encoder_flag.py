"""``--encoder MODALITY=DIR_OR_HUB_ID``: a user's Hugging Face checkpoint as one modality's encoder."""
from __future__ import annotations

from runtime.errors import ConfigError


ENCODER_HELP = ("MODALITY=DIR_OR_HUB_ID: a Hugging Face checkpoint (local directory or hub id) as that modality's "
                "encoder, with the preprocessing it ships (preprocessor_config.json, tokenizer.json); repeatable. "
                "Supported model types are listed by the error for any other")


def parse_encoder_flags(values: list[str] | None) -> dict[str, str]:
    """{"image": "facebook/dinov2-small", ...} from repeated ``MODALITY=SOURCE`` values."""
    out: dict[str, str] = {}
    for value in values or []:
        modality, sep, source = value.partition("=")
        if not sep or not modality or not source:
            raise ConfigError(f"--encoder {value!r}: expected MODALITY=DIR_OR_HUB_ID, "
                                             "e.g. --encoder image=./dinov2-small")
        if modality in out:
            raise ConfigError(f"--encoder names {modality!r} twice ({out[modality]!r}, {source!r})")
        out[modality] = source
    return out


def unimodal_encoder(value: str | None, modality: str) -> str | None:
    """``train unimodal --encoder``: SOURCE, or MODALITY=SOURCE whose MODALITY must be --modality."""
    if value is None:
        return None
    name, sep, source = value.partition("=")
    if sep and name and "/" not in name and not name.startswith("."):
        if name != modality:
            raise ConfigError(f"--encoder {value!r} is for modality {name!r}, but --modality is "
                                             f"{modality!r}")
        return source
    return value
