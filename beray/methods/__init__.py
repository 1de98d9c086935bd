"""Self-supervised methods: pretext tasks (Eq. 3-5) and MoCo (Eq. 6-7), each plugged with BE. No Ray here."""

from beray.methods.moco import MoCoBE  # noqa: F401
from beray.methods.pretext import PRETEXTS, build_pretext  # noqa: F401
