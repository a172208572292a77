"""NIC capability profiles: what a device can offload, as data files.

A profile lists the flower keys a device matches (``fields``), the actions it
executes, whether it takes native port ranges, which address masks, and its
table limits. Profiles live in ``backends/profiles/*.toml``; the hardware ones
are modelled on public driver sources and marked ``approximate``, so every
value can be overridden (``--profile-set max_rules=2000``) or a whole profile
given as a path.

>>> p = load_profile("software")
>>> p.install_flags, p.allows_field("tcp_flags")
('skip_hw', True)
>>> load_profile("ice-e810", {"max_rules": "100"}).max_rules
100
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from backends.flower.rules import CT_COMMIT, FlowerKind, InstallFlags
from ir.fields import STATE_NAMES

PROFILE_DIR = Path(__file__).with_name("profiles")

FIELD_KINDS = (
    "vlan_id",
    "ip_tos",
    "ip_proto",
    "ipv4",
    "ipv6",
    "ports",
    "tcp_flags",
    "icmp",
    "ip_flags",
    "ct_state",
)
# The spellings profile files use: the flower enums' values, and ct_commit
# (``ct commit`` before a verdict, which a device may track without storing).
ACTION_KINDS = (*(k.value for k in FlowerKind), CT_COMMIT)
INSTALL_FLAGS = tuple(f.value for f in InstallFlags)
ADDRESS_MASKS = ("prefix", "arbitrary")


class ProfileError(ValueError):
    """A profile file or override is missing, malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class NicProfile:
    """What one device (or the software datapath) can execute.

    Attributes:
        name: profile name (file stem for the bundled ones).
        description: one line for humans.
        approximate: True when the limits are modelled, not measured.
        install_flags: flower flags rules are installed with (skip_hw, skip_sw, none).
        fields: flower key groups the device matches (see FIELD_KINDS).
        actions: action kinds it executes (see ACTION_KINDS).
        port_ranges: native port min/max ranges; otherwise ranges expand to masks.
        address_masks: ``prefix`` (contiguous) or ``arbitrary`` address masks.
        max_expansion: most filters one IR rule may become before it stays in the slow path.
        max_rules: filter table size.
        max_masks: distinct masks the device can hold at once.
        ct_states: with the ``ct_state`` field, the connection states (ir.fields
            STATE_NAMES) whose ``+trk+<state>`` key the device matches (a device
            offloading established connections only lists ``established``).
    """

    name: str
    description: str
    approximate: bool
    install_flags: str
    fields: tuple[str, ...]
    actions: tuple[str, ...]
    port_ranges: bool
    address_masks: str
    max_expansion: int
    max_rules: int
    max_masks: int
    ct_states: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in self.fields:
            if kind not in FIELD_KINDS:
                raise ProfileError(f"profile {self.name}: unknown field kind {kind!r}")
        for kind in self.actions:
            if kind not in ACTION_KINDS:
                raise ProfileError(f"profile {self.name}: unknown action kind {kind!r}")
        if self.install_flags not in INSTALL_FLAGS:
            raise ProfileError(f"profile {self.name}: install_flags must be one of {INSTALL_FLAGS}")
        if self.address_masks not in ADDRESS_MASKS:
            raise ProfileError(f"profile {self.name}: address_masks must be one of {ADDRESS_MASKS}")
        for state in self.ct_states:
            if state not in STATE_NAMES:
                raise ProfileError(f"profile {self.name}: unknown connection state {state!r}")
        if bool(self.ct_states) != ("ct_state" in self.fields):
            raise ProfileError(
                f"profile {self.name}: ct_states lists what the ct_state field matches; "
                "give both or neither"
            )
        for limit in ("max_expansion", "max_rules", "max_masks"):
            if getattr(self, limit) < 1:
                raise ProfileError(f"profile {self.name}: {limit} must be at least 1")

    def allows_field(self, kind: str) -> bool:
        """True when the device matches the flower key group ``kind``."""
        return kind in self.fields

    def allows_action(self, kind: str) -> bool:
        """True when the device executes the action ``kind``."""
        return kind in self.actions

    def allows_state(self, state: int) -> bool:
        """True when the device matches ``+trk+<state>`` for IR state number ``state``."""
        return any(STATE_NAMES[name] == state for name in self.ct_states)


def profile_names() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str, overrides: dict[str, str] | None = None) -> NicProfile:
    """Load a bundled profile by name, or a profile file by path, then apply overrides.

    Overrides are ``KEY=VALUE`` strings already split; values are parsed by the
    type of the field they replace (comma lists for ``fields``/``actions``).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ProfileError(
                f"unknown profile {name_or_path!r} (bundled: {', '.join(profile_names())})"
            )
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise ProfileError(f"{path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: {err}") from None
    known = {f.name for f in fields(NicProfile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{path}: unknown keys {', '.join(unknown)}")
    optional = {f.name for f in fields(NicProfile) if f.default is not MISSING}
    missing = sorted(known - set(data) - optional)
    if missing:
        raise ProfileError(f"{path}: missing keys {', '.join(missing)}")
    types = {f.name: str(f.type) for f in fields(NicProfile)}
    values: dict[str, object] = {}
    for key, value in data.items():
        want = types[key]
        ok = (
            (want.startswith("tuple") and isinstance(value, list))
            or (want == "bool" and isinstance(value, bool))
            or (want == "int" and isinstance(value, int) and not isinstance(value, bool))
            or (want == "str" and isinstance(value, str))
        )
        if not ok:
            raise ProfileError(f"{path}: {key} should be {want}, not {value!r}")
        values[key] = tuple(value) if isinstance(value, list) else value
    profile = NicProfile(**values)  # type: ignore[arg-type]
    return apply_overrides(profile, overrides or {})


def apply_overrides(profile: NicProfile, overrides: dict[str, str]) -> NicProfile:
    """``profile`` with each ``key -> text value`` override parsed and applied."""
    changes: dict[str, object] = {}
    types = {f.name: str(f.type) for f in fields(NicProfile)}
    for key, text in overrides.items():
        if key not in types or key == "name":
            raise ProfileError(f"cannot override {key!r} (keys: {', '.join(sorted(types))})")
        kind = types[key]
        if "tuple" in kind:
            changes[key] = tuple(v.strip() for v in text.split(",") if v.strip())
        elif "bool" in kind:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ProfileError(f"{key}: expected true or false, got {text!r}")
            changes[key] = text.lower() in ("true", "1", "yes")
        elif "int" in kind:
            try:
                changes[key] = int(text, 0)
            except ValueError:
                raise ProfileError(f"{key}: expected an integer, got {text!r}") from None
        else:
            changes[key] = text
    return replace(profile, **changes) if changes else profile  # type: ignore[arg-type]
